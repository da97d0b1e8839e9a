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
