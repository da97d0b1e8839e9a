#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: KubeSolo OS developers
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate (header, docs before imports) that ruff would otherwise flag:

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: deb_packages
short_description: Download and extract Debian packages (optionally with their dependency closure) without installing
version_added: "0.1.0"
description:
  - Resolves Debian package names to the candidate versions in apt's (signed) package indexes of the build host.
  - Downloads the C(.deb) files with C(apt-get download), which verifies them against apt's signed indexes,
    into O(cache_dir). A C(.deb) already present there under the name C(apt-get download) would give it, and
    whose SHA-256 matches the index, is reused without downloading.
  - Extracts each package with C(dpkg-deb -x) into O(extract_dir)/<name>_<version>/. Extraction happens in a
    temporary directory that is renamed into place; a marker file C(.<name>_<version>.extracted) next to it,
    written last, makes later runs skip the package. A tree without its marker is extracted again.
  - Nothing is installed on the build host, and apt's indexes are not updated (run C(apt-get update) first).
  - Repeated runs are fast. The answers of C(apt-cache) are cached in O(cache_dir) (C(.apt-query-cache.json)),
    keyed on the exact query and on the state of apt (size and modification time of every file under
    C(/var/lib/apt/lists) and C(/etc/apt)), so an C(apt-get update) or a changed source or pin invalidates them.
    A cached C(.deb) whose size, modification time and inode are those recorded when its SHA-256 was last
    verified (C(.verified.json)) is not hashed again.
author:
  - KubeSolo OS developers (!UNKNOWN)
options:
  names:
    description:
      - Debian package names, each optionally pinned to a version as C(name=version).
      - Packages named here are always taken, even when also listed in O(exclude).
    type: list
    elements: str
    required: true
  recursive:
    description:
      - Also take the closure of the C(Depends) and C(Pre-Depends) of the named packages, as reported by
        C(apt-cache depends --recurse) (recommends, suggests, conflicts, breaks, replaces and enhances ignored).
      - Of a group of alternatives (C(a | b)) the first real package is taken; a virtual package is resolved to
        a provider that is explicitly named in O(names), or else to the first provider apt-cache lists.
    type: bool
    default: false
  exclude:
    description:
      - Package names to leave out of the dependency closure (for example C(debconf) or C(perl-base)).
        Their own dependencies are not followed either (unless reached another way).
      - Never excludes a package explicitly named in O(names).
    type: list
    elements: str
    default: []
  cache_dir:
    description:
      - Directory the C(.deb) files are downloaded into (created if missing).
    type: path
    required: true
  extract_dir:
    description:
      - Directory under which each package is extracted into C(<name>_<version>/) (created if missing).
    type: path
    required: true
  metapackage_depends:
    description:
      - A regular expression. Each name in O(names) that does not match it is taken as a metapackage and replaced
        by the first package of its C(Depends) that matches it (for example C(linux-image-amd64) becomes the
        current C(linux-image-6.1.0-NN-amd64) with V(^linux-image-[0-9])). The metapackage itself is not taken.
      - Fails, naming the metapackage, when none of its dependencies matches.
    type: str
    version_added: "0.2.0"
  architecture:
    description:
      - Debian architecture of the packages (packages of architecture C(all) are accepted too).
      - For an architecture other than the build host's native one, it must have been added with
        C(dpkg --add-architecture) and apt's indexes updated.
    type: str
    default: amd64
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Resolves versions only and reports what would be downloaded and extracted.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
notes:
  - Needs C(apt-cache), C(apt-get) and C(dpkg-deb) on the host that runs the module.
"""

EXAMPLES = r"""
- name: Fetch and unpack busybox
  kubesolo.os.deb_packages:
    names:
      - busybox-static
    cache_dir: "{{ playbook_dir }}/build/cache/debs"
    extract_dir: "{{ playbook_dir }}/build/cache/pkgroot"
  register: busybox

- name: Fetch iptables with its libraries, but not debconf
  kubesolo.os.deb_packages:
    names:
      - iptables
      - nftables=1.0.6-2+deb12u2
    recursive: true
    exclude:
      - debconf
      - perl-base
    cache_dir: /srv/build/cache/debs
    extract_dir: /srv/build/cache/pkgroot
  register: netfilter

- name: Show where libc6 was extracted
  ansible.builtin.debug:
    msg: "{{ (netfilter.packages | selectattr('name', 'equalto', 'libc6') | first).root }}"
"""

RETURN = r"""
packages:
  description: Every package taken (the named ones and, if O(recursive), their closure), sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Package name.
      type: str
      sample: busybox-static
    version:
      description: Version taken (the candidate, or the pinned one).
      type: str
      sample: 1:1.35.0-4+deb12u1+b1
    architecture:
      description: Architecture of the package (C(all) for architecture-independent packages).
      type: str
      sample: amd64
    filename:
      description: Absolute path of the C(.deb) file (in check mode, where it would be).
      type: str
      sample: /srv/build/cache/debs/busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb
    sha256:
      description: SHA-256 of the C(.deb) file (in check mode, the one apt's index records).
      type: str
      sample: 3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744
    root:
      description: Absolute path of the directory the package is (or would be) extracted into.
      type: str
      sample: /srv/build/cache/pkgroot/busybox-static_1:1.35.0-4+deb12u1+b1
  sample:
    - name: busybox-static
      version: 1:1.35.0-4+deb12u1+b1
      architecture: amd64
      filename: /srv/build/cache/debs/busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb
      sha256: 3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744
      root: /srv/build/cache/pkgroot/busybox-static_1:1.35.0-4+deb12u1+b1
metapackages:
  description: Each metapackage of O(names) and the package it was replaced with (see O(metapackage_depends)).
  returned: always
  type: dict
  sample: {linux-image-amd64: linux-image-6.1.0-56-amd64}
downloaded:
  description: Names of the packages that were (in check mode, would be) downloaded.
  returned: always
  type: list
  elements: str
  sample: [busybox-static]
extracted:
  description: Names of the packages that were (in check mode, would be) extracted.
  returned: always
  type: list
  elements: str
  sample: [busybox-static]
"""

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubesolo.os.plugins.module_utils.buildutil import (
    C_ENV,
    command_failure,
    read_state,
    run_checked,
    sha256_file,
    write_atomic,
    write_state,
)

APT_DEPENDS_FLAGS = [
    "--recurse",
    "--no-recommends",
    "--no-suggests",
    "--no-conflicts",
    "--no-breaks",
    "--no-replaces",
    "--no-enhances",
]
DEPENDENCY_TYPES = ("Depends", "PreDepends")
MARKER_SUFFIX = ".extracted"
# What apt's answers depend on: the package lists and the configuration (sources, pins, apt.conf).
APT_STATE_PATHS = ("/var/lib/apt/lists", "/etc/apt")
QUERY_CACHE_NAME = ".apt-query-cache.json"
VERIFIED_CACHE_NAME = ".verified.json"


def apt_state(paths: tuple[str, ...] = APT_STATE_PATHS) -> str:
    """Fingerprint of apt's state: path, size and mtime of every file below the given paths."""
    digest = hashlib.sha256(os.environ.get("APT_CONFIG", "").encode())
    for base in paths:
        for directory, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(directory, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class JsonCache:
    """A small JSON state file in the cache directory; written only when it changed (and never in check mode)."""

    def __init__(self, path: str, writable: bool) -> None:
        self.path = path
        self.writable = writable
        self.dirty = False
        self.data: dict = read_state(path) or {}

    def save(self) -> None:
        if self.dirty and self.writable and os.path.isdir(os.path.dirname(self.path)):
            write_state(self.path, self.data)


class AptQueries:
    """apt-cache answers, cached for as long as apt's state (lists, configuration) stays the same."""

    def __init__(self, module: AnsibleModule, cache_dir: str) -> None:
        self.module = module
        self.state = apt_state()
        self.cache = JsonCache(os.path.join(cache_dir, QUERY_CACHE_NAME), writable=not module.check_mode)
        if self.cache.data.get("state") != self.state:
            self.cache.data = {"state": self.state, "queries": {}}

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        key = json.dumps(argv)
        cached = self.cache.data["queries"].get(key)
        if cached is not None:
            return int(cached[0]), str(cached[1]), ""
        rc, out, err = self.module.run_command(argv, environ_update=C_ENV)
        if rc in (0, 100):  # 100: apt-cache show found none of the names (a stable answer, too)
            self.cache.data["queries"][key] = [rc, out]
            self.cache.dirty = True
        return rc, out, err


class VerifiedDebs:
    """SHA-256 of cached .deb files, trusted while size, mtime and inode are unchanged."""

    def __init__(self, cache_dir: str, writable: bool) -> None:
        self.cache = JsonCache(os.path.join(cache_dir, VERIFIED_CACHE_NAME), writable)

    @staticmethod
    def _identity(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def sha256(self, path: str) -> str:
        st = os.stat(path)
        name = os.path.basename(path)
        record = self.cache.data.get(name)
        if isinstance(record, list) and len(record) == 2 and record[0] == self._identity(st):
            return str(record[1])
        digest = sha256_file(path)
        self.cache.data[name] = [self._identity(st), digest]
        self.cache.dirty = True
        return digest


def split_spec(spec: str) -> tuple[str, str | None]:
    """Split "name" or "name=version" into (name, version or None)."""
    name, sep, version = spec.strip().partition("=")
    name = name.strip()
    version = version.strip() if sep else None
    return name, (version or None)


def strip_arch(name: str) -> str:
    """Drop an architecture qualifier ("libc6:amd64" -> "libc6")."""
    return name.split(":", 1)[0]


def quote_version(version: str) -> str:
    """Quote a version the way apt-get download does in the .deb file name (epoch ':' -> '%3a')."""
    return version.replace(":", "%3a")


def deb_filename(name: str, version: str, architecture: str) -> str:
    """The file name apt-get download gives a package."""
    return f"{name}_{quote_version(version)}_{architecture}.deb"


def parse_control_records(text: str) -> list[dict[str, str]]:
    """Parse deb822 records (apt-cache show output) into dicts; continuation lines are appended to their field."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last_key: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                records.append(current)
            current, last_key = {}, None
        elif line[0] in " \t":
            if last_key is not None:
                current[last_key] += "\n" + line.strip()
        elif ":" in line:
            key, _sep, value = line.partition(":")
            last_key = key.strip()
            current[last_key] = value.strip()
    if current:
        records.append(current)
    return records


def parse_depends(text: str) -> dict[str, list[list[tuple[str, list[str]]]]]:
    """Parse `apt-cache depends` output.

    Returns {package: [group, ...]} for Depends/PreDepends only, where a group is a list of alternatives and
    each alternative is (name, providers): providers is None-like ([]) for a real package and the list of
    providing packages for a virtual one (its name is then "<virtual>", angle brackets kept).
    """
    graph: dict[str, list[list[tuple[str, list[str]]]]] = {}
    current: str | None = None
    group: list[tuple[str, list[str]]] = []
    entry: tuple[str, list[str]] | None = None  # last dependency entry; may collect provider lines
    open_group = False  # the previous entry ended with "|": the next one belongs to the same group
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if not raw[0].isspace() and raw[0] != "|":
            # A package block header (a virtual package reached by --recurse is printed as "<name>").
            name = raw.strip()
            current = None if name.startswith("<") else strip_arch(name)
            if current is not None:
                graph.setdefault(current, [])
            group, entry, open_group = [], None, False
            continue
        if current is None:
            continue
        if raw.startswith("    "):
            # A provider line: alternatives for a virtual package (for a real package: other providers, ignored).
            if entry is not None and entry[0].startswith("<"):
                entry[1].append(strip_arch(raw.strip()))
            continue
        is_or = raw[:2].strip() == "|"
        body = raw.lstrip(" |")
        dep_type, sep, dep_name = body.partition(":")
        if not sep:
            continue
        dep_name = dep_name.strip()
        if dep_type.strip() not in DEPENDENCY_TYPES:
            entry, open_group = None, False
            continue
        if not open_group:
            group = []
            graph[current].append(group)
        entry = (dep_name if dep_name.startswith("<") else strip_arch(dep_name), [])
        group.append(entry)
        open_group = is_or
    return graph


def choose_alternative(group: list[tuple[str, list[str]]], preferred: set[str]) -> str | None:
    """Pick the package that satisfies a dependency group.

    An alternative (or a provider of a virtual one) in `preferred` wins; otherwise the first real package,
    or the first listed provider of the first virtual package that has one. None if nothing can satisfy it.
    """
    for name, providers in group:
        if name in preferred:
            return name
        for provider in providers:
            if provider in preferred:
                return provider
    for name, providers in group:
        if not name.startswith("<"):
            return name
        if providers:
            return providers[0]
    return None


def dependency_closure(
    graph: dict[str, list[list[tuple[str, list[str]]]]],
    roots: list[str],
    exclude: set[str],
) -> tuple[set[str], list[str]]:
    """Walk the dependency graph from roots; excluded packages are neither taken nor followed.

    Returns (closure, unsatisfied) where unsatisfied describes groups nothing could be chosen for.
    """
    preferred = set(roots)
    taken: set[str] = set(roots)
    unsatisfied: list[str] = []
    todo = list(roots)
    while todo:
        pkg = todo.pop(0)
        for group in graph.get(pkg, []):
            choice = choose_alternative(group, preferred)
            if choice is None:
                alternatives = " | ".join(alt[0] for alt in group)
                unsatisfied.append(f"{pkg}: {alternatives}")
                continue
            if choice in taken or choice in exclude:
                continue
            taken.add(choice)
            todo.append(choice)
    return taken, unsatisfied


def resolve(module: AnsibleModule, apt: AptQueries, wanted: dict[str, str | None],
            architecture: str) -> dict[str, dict[str, str]]:
    """Resolve {name: version or None} to apt-cache show records (candidate, or the pinned version)."""
    specs = [qualified(name, version, architecture) for name, version in sorted(wanted.items())]
    argv = ["apt-cache", "show", "--no-all-versions", *specs]
    rc, out, err = apt.run(argv)
    # rc is 100 only when none of the packages was found; missing ones are detected below either way.
    if rc not in (0, 100):
        module.fail_json(msg=command_failure(argv, rc, out, err, "resolving Debian packages"), rc=rc, stderr=err)
    found: dict[str, dict[str, str]] = {}
    for record in parse_control_records(out if rc == 0 else ""):
        name = record.get("Package")
        if not name or name not in wanted:
            continue
        if record.get("Architecture") not in (architecture, "all"):
            continue
        pinned = wanted[name]
        if pinned is not None and record.get("Version") != pinned:
            continue
        found.setdefault(name, record)
    problems = []
    for name, version in sorted(wanted.items()):
        record = found.get(name)
        label = name if version is None else f"{name}={version}"
        if record is None:
            problems.append(f"{label} (no candidate)" if version is None else f"{label} (version not available)")
        elif not record.get("Filename") or not record.get("SHA256") or not record.get("Version"):
            problems.append(f"{label} (no downloadable version in apt's indexes)")
    if problems:
        module.fail_json(
            msg=f"cannot resolve Debian package(s) for architecture {architecture}: {', '.join(problems)}. "
            "Check the names, and run 'apt-get update' if apt's package lists are missing or stale.",
            unresolved=problems,
        )
    return found


def replace_metapackages(module: AnsibleModule, apt: AptQueries, names: list[str], pattern: str | None,
                         architecture: str) -> tuple[list[str], dict[str, str]]:
    """Replace each name not matching ``pattern`` by the first of its Depends that matches it."""
    if not pattern:
        return list(names), {}
    try:
        concrete = re.compile(pattern)
    except re.error as exc:
        module.fail_json(msg=f"metapackage_depends is not a regular expression: {exc}")
    result: list[str] = []
    replaced: dict[str, str] = {}
    for spec in names:
        name, version = split_spec(spec)
        if concrete.search(name):
            result.append(spec)
            continue
        argv = ["apt-cache", "depends", *APT_DEPENDS_FLAGS[1:], qualified(name, version, architecture)]
        rc, out, err = apt.run(argv)
        graph = parse_depends(out) if rc == 0 else {}
        choices = [alternative for groups in graph.values() for group in groups for alternative, _providers in group
                   if concrete.search(strip_arch(alternative))]
        if not choices:
            module.fail_json(msg=f"{name} is not a package whose name matches {pattern!r}, and none of its Depends "
                             f"does (apt-cache depends said: {(out or err).strip()[:500]}). Name a metapackage or "
                             "a concrete package.")
        replaced[name] = strip_arch(choices[0])
        result.append(replaced[name])
    return result, replaced


def qualified(name: str, version: str | None, architecture: str) -> str:
    spec = f"{name}:{architecture}"
    return spec if version is None else f"{spec}={version}"


def extract(module: AnsibleModule, deb: str, root: str, marker: str, sha256: str) -> None:
    """Extract deb into root via a temporary directory, then write the marker (last)."""
    parent = os.path.dirname(root)
    base = os.path.basename(root)
    for stale in glob.glob(os.path.join(glob.escape(parent), glob.escape("." + base + ".tmp-") + "*")):
        shutil.rmtree(stale, ignore_errors=True)
    if os.path.lexists(marker):
        os.unlink(marker)
    tmp = tempfile.mkdtemp(prefix="." + base + ".tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o755)
        run_checked(module, ["dpkg-deb", "-x", deb, tmp], what=f"extracting {deb}")
        if os.path.isdir(root) and not os.path.islink(root):
            shutil.rmtree(root)
        elif os.path.lexists(root):
            os.unlink(root)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_atomic(marker, (sha256 + "\n").encode(), 0o644, prefix=os.path.basename(marker) + ".")


def is_extracted(root: str, marker: str, sha256: str) -> bool:
    if not os.path.isdir(root) or not os.path.isfile(marker):
        return False
    with open(marker) as handle:
        return handle.read().strip() == sha256


def wanted_packages(module: AnsibleModule, apt: AptQueries, params: dict[str, Any],
                    architecture: str) -> tuple[dict[str, str | None], dict[str, str]]:
    """Step 1 (resolve): {name: pinned version or None} of every package to take (the names, metapackages
    replaced, and with recursive their dependency closure), and the metapackages replaced."""
    names, metapackages = replace_metapackages(module, apt, params["names"], params["metapackage_depends"],
                                               architecture)
    explicit: dict[str, str | None] = {}
    for spec in names:
        name, version = split_spec(spec)
        if not name:
            module.fail_json(msg=f"empty package name in names: {spec!r}")
        previous = explicit.get(name)
        if previous is not None and version is not None and previous != version:
            module.fail_json(msg=f"package {name} is named with two versions: {previous} and {version}")
        explicit[name] = version if version is not None else previous

    wanted: dict[str, str | None] = dict(explicit)
    if params["recursive"]:
        roots = [qualified(name, version, architecture) for name, version in sorted(explicit.items())]
        # Make sure every root resolves first, so an unknown name gives the clear message.
        resolve(module, apt, explicit, architecture)
        argv = ["apt-cache", "depends", *APT_DEPENDS_FLAGS, *roots]
        rc, out, err = apt.run(argv)
        if rc != 0:
            module.fail_json(msg=command_failure(argv, rc, out, err, "resolving the dependencies"), rc=rc,
                             stderr=err)
        graph = parse_depends(out)
        closure, unsatisfied = dependency_closure(graph, sorted(explicit), set(params["exclude"]))
        for problem in unsatisfied:
            module.warn(f"no package satisfies the dependency {problem}")
        for name in closure:
            wanted.setdefault(name, None)
    return wanted, metapackages


def plan_packages(records: dict[str, dict[str, str]], cache_dir: str, extract_dir: str) -> list[dict[str, Any]]:
    """Step 2 (plan): per package its version, .deb in the cache, SHA-256 from apt's index and extracted tree."""
    plan = []
    for name in sorted(records):
        record = records[name]
        version = record["Version"]
        deb_arch = record["Architecture"]
        plan.append(
            {
                "name": name,
                "version": version,
                "architecture": deb_arch,
                "filename": os.path.join(cache_dir, deb_filename(name, version, deb_arch)),
                "sha256": record["SHA256"].lower(),
                "root": os.path.join(extract_dir, f"{name}_{version}"),
            }
        )
    return plan


def download(module: AnsibleModule, plan: list[dict[str, Any]], verified: VerifiedDebs, cache_dir: str,
             architecture: str) -> list[dict[str, Any]]:
    """Step 3 (apply): fetch the .debs the cache lacks (a cached one is reused only when it matches the index's
    SHA-256), each checked against the index. Returns the packages fetched (to fetch, in check mode)."""
    to_download = [pkg for pkg in plan
                   if not (os.path.isfile(pkg["filename"]) and verified.sha256(pkg["filename"]) == pkg["sha256"])]
    if to_download and not module.check_mode:
        for pkg in to_download:
            if os.path.lexists(pkg["filename"]):
                os.unlink(pkg["filename"])
        specs = [qualified(pkg["name"], pkg["version"], architecture) for pkg in to_download]
        run_checked(module, ["apt-get", "-q", "download", *specs], what="downloading Debian packages", cwd=cache_dir)
        for pkg in to_download:
            if not os.path.isfile(pkg["filename"]):
                module.fail_json(msg=f"apt-get download did not produce {pkg['filename']}")
            actual = verified.sha256(pkg["filename"])
            if actual != pkg["sha256"]:
                module.fail_json(msg=f"{pkg['filename']} has SHA-256 {actual}, apt's index says {pkg['sha256']}")
    return to_download


def extract_all(module: AnsibleModule, plan: list[dict[str, Any]], extract_dir: str) -> list[dict[str, Any]]:
    """Step 3 (apply): extract every package whose tree's marker does not record this .deb's SHA-256."""
    to_extract = []
    for pkg in plan:
        marker = os.path.join(extract_dir, "." + os.path.basename(pkg["root"]) + MARKER_SUFFIX)
        if is_extracted(pkg["root"], marker, pkg["sha256"]):
            continue
        to_extract.append(pkg)
        if not module.check_mode:
            try:
                extract(module, pkg["filename"], pkg["root"], marker, pkg["sha256"])
            except OSError as exc:
                module.fail_json(msg=f"cannot extract {pkg['filename']} into {pkg['root']}: {exc}")
    return to_extract


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            names=dict(type="list", elements="str", required=True),
            recursive=dict(type="bool", default=False),
            exclude=dict(type="list", elements="str", default=[]),
            cache_dir=dict(type="path", required=True),
            extract_dir=dict(type="path", required=True),
            architecture=dict(type="str", default="amd64"),
            metapackage_depends=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    architecture: str = params["architecture"]
    cache_dir = os.path.abspath(params["cache_dir"])
    extract_dir = os.path.abspath(params["extract_dir"])
    apt = AptQueries(module, cache_dir)
    wanted, metapackages = wanted_packages(module, apt, params, architecture)
    plan = plan_packages(resolve(module, apt, wanted, architecture), cache_dir, extract_dir)

    if not module.check_mode:
        for directory in (cache_dir, extract_dir):
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                module.fail_json(msg=f"cannot create {directory}: {exc}")
    verified = VerifiedDebs(cache_dir, writable=not module.check_mode)
    to_download = download(module, plan, verified, cache_dir, architecture)
    to_extract = extract_all(module, plan, extract_dir)

    for cache in (apt.cache, verified.cache):
        try:
            cache.save()
        except OSError as exc:
            module.warn(f"cannot write the cache {cache.path}: {exc}")
    module.exit_json(
        changed=bool(to_download or to_extract),
        packages=plan,
        metapackages=metapackages,
        downloaded=[pkg["name"] for pkg in to_download],
        extracted=[pkg["name"] for pkg in to_extract],
    )


if __name__ == "__main__":
    main()
