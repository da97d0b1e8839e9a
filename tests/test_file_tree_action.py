"""kubesolo.os.file_tree through ansible-playbook: the action plugin renders templates exactly as
ansible.builtin.template does (same bytes), and the task is idempotent, honours check/diff mode and no_log."""

from __future__ import annotations

from pathlib import Path

from conftest import ansible_playbook

PLAYBOOK = """\
- name: file_tree against ansible.builtin.template
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
    greeting: hello
    items_list: [b, a]
    secret_value: s3cr3t-value-never-printed
  tasks:
    - name: Render with ansible.builtin.template
      ansible.builtin.template:
        src: page.j2
        dest: "{{ out }}/builtin.txt"
        mode: "0644"
    - name: Render with kubesolo.os.file_tree
      kubesolo.os.file_tree:
        root: "{{ out }}/tree"
        files:
          - { path: /etc/page.txt, template: page.j2, mode: "0640" }
          - { path: /etc/plain.txt, content: "plain\\n" }
    - name: Write a secret with no_log
      kubesolo.os.file_tree:
        root: "{{ out }}/tree"
        files:
          - { path: /etc/secret, content: "{{ secret_value }}\\n", mode: "0600" }
      no_log: true
"""

TEMPLATE = """\
# {{ ansible_managed }}
{% include 'part.j2' %}
{% for item in items_list | sort %}
line {{ item }} {{ greeting }}
{% endfor %}
no trailing blank line follows
"""


def write_project(tmp_path: Path) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "page.j2").write_text(TEMPLATE)
    (tmp_path / "templates" / "part.j2").write_text("included {{ greeting }}\n")
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    return playbook


def test_renders_like_template_and_is_idempotent(tmp_path: Path) -> None:
    playbook = write_project(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    common = ["-i", "localhost,", "-e", f"out={out}"]
    first = ansible_playbook(str(playbook), *common, "--diff")
    assert first.recap["failed"] == 0
    rendered = (out / "tree/etc/page.txt").read_bytes()
    assert rendered == (out / "builtin.txt").read_bytes()  # byte for byte what the template module writes
    assert b"line a hello\nline b hello\n" in rendered and b"included hello" in rendered
    assert (out / "tree/etc/page.txt").stat().st_mode & 0o777 == 0o640
    assert (out / "tree/etc/secret").stat().st_mode & 0o777 == 0o600
    assert "s3cr3t-value-never-printed" not in first.result.stdout + first.result.stderr

    second = ansible_playbook(str(playbook), *common)
    assert second.recap["changed"] == 0, second.changed_tasks()

    check = ansible_playbook(str(playbook), *common, "-e", "greeting=bonjour", "--check", "--diff")
    assert "+line b bonjour" in check.result.stdout  # the diff shows the new text ...
    assert b"bonjour" not in (out / "tree/etc/page.txt").read_bytes()  # ... and check mode wrote nothing
    assert "s3cr3t-value-never-printed" not in check.result.stdout + check.result.stderr


VARS_PLAYBOOK = """\
- name: file_tree renders one template several times with per-file vars
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
    greeting: hello
    items_list: [b, a]
    media: [{name: cd, word: disc}, {name: usb, word: stick}]
  tasks:
    - name: Render page.j2 once per medium, in one task
      kubesolo.os.file_tree:
        root: "{{ out }}/tree"
        files: >-
          {%- set acc = namespace(items=[]) -%}
          {%- for medium in media -%}
          {%-   set acc.items = acc.items + [{'path': medium.name ~ '/page.txt', 'template': 'page.j2',
                                              'vars': {'greeting': medium.word}}] -%}
          {%- endfor -%}
          {{ acc.items + [{'path': 'plain/page.txt', 'template': 'page.j2'}] }}
    - name: Render page.j2 with a per-file greeting through ansible.builtin.template
      ansible.builtin.template:
        src: page.j2
        dest: "{{ out }}/builtin-stick.txt"
        mode: "0644"
      vars:
        greeting: stick
"""


def test_per_file_vars_render_each_file_with_its_own(tmp_path: Path) -> None:
    """files[].vars: one task renders a template per medium (what a loop of tasks did), each file byte for byte
    what ansible.builtin.template writes with those variables; a file without vars sees the task's."""
    write_project(tmp_path)
    playbook = tmp_path / "vars.yml"
    playbook.write_text(VARS_PLAYBOOK)
    out = tmp_path / "out"
    out.mkdir()
    first = ansible_playbook(str(playbook), "-i", "localhost,", "-e", f"out={out}")
    assert first.recap["failed"] == 0
    assert (out / "tree/usb/page.txt").read_bytes() == (out / "builtin-stick.txt").read_bytes()
    assert b"line a disc\n" in (out / "tree/cd/page.txt").read_bytes()
    assert b"included disc" in (out / "tree/cd/page.txt").read_bytes()  # includes see the vars too
    assert b"line a hello\n" in (out / "tree/plain/page.txt").read_bytes()
    second = ansible_playbook(str(playbook), "-i", "localhost,", "-e", f"out={out}")
    assert second.recap["changed"] == 0, second.changed_tasks()
