# /usr/lib/kubesolo-os/cloud-init.awk: parser and validator of KubeSolo OS cloud-init files
# (the YAML subset of docs/cloud-init.md), for busybox awk. Copied by the Ansible role `init`.
#
#   awk -v schema=/usr/lib/kubesolo-os/cloud-init.schema [-v size=BYTES] -f cloud-init.awk FILE
#
# The SAME algorithm as the Python side (collection kubesolo.os, module_utils/cloudinit.py):
# both print the same records for the same file (tests/test_cloudinit.py checks every fixture).
#   N<TAB>kind<TAB>line<TAB>path<TAB>value   kind: M mapping, L list, Z null, P plain, Q quoted,
#                                            B block scalar; value escaped (\\ \n \t)
#   D<TAB>level<TAB>line<TAB>key<TAB>message level ERROR or WARN; messages never hold values
# The schema file (rendered from files/cloud-init-schema.yml; the P lines from the bind mounts of
# files/boot-contract.yml) has lines
#   K<TAB>key<TAB>type<TAB>key_pattern,   P<TAB>persistent directory,   S<TAB>max_bytes<TAB>N   and the
#   cross-key rules R<TAB>mapping<TAB>rule<TAB>keys (space-separated)<TAB>if_key<TAB>if_value<TAB>message
# Parsing stops at the first syntax error (one ERROR record). Data is never evaluated.
# A file larger than max_bytes (size= from the caller, else counted while reading) is refused with
# one ERROR at line 1 and nothing else. A UTF-8 byte order mark at the start is skipped; a line that
# is not valid UTF-8 is a syntax error on that line.
# Linear time: no string is built by repeated concatenation (join() halves), no per-node scan of
# the skipped paths (each node knows its parent), diagnostics are bucketed by line, not sorted.

BEGIN {
    TAB = "\t"
    # Set before the schema is read: an error in it (perr) is a diagnostic like any other.
    nn = 0
    nd = 0
    nsk = 0
    ndirs = 0
    while ((getline sl < schema) > 0) {
        split(sl, sf, "\t")
        if (sf[1] == "K") {
            nsk++
            sk_order[nsk] = sf[2]
            sk_type[sf[2]] = sf[3]
            sk_pat[sf[2]] = sf[4]
        } else if (sf[1] == "P") {
            ndirs++
            dirs[ndirs] = sf[2]
        } else if (sf[1] == "S" && sf[2] == "max_bytes") {
            maxbytes = sf[3] + 0
        } else if (sf[1] == "R") {
            load_rule_row(sf)
        } else {
            load_flag_row(sf)
        }
    }
    close(schema)
    if (nsk == 0 || maxbytes <= 0) {
        perr(0, "", "cannot read the schema " schema)
    }
    nmapany = 0
    for (k = 1; k <= nsk; k++) {
        if (sk_type[sk_order[k]] == "map_any" && ((sk_order[k] ".*") in sk_type)) mapany[++nmapany] = sk_order[k]
    }
    total = 0
    toobig = 0
    size_known = (size != "")
    if (size_known && size + 0 > maxbytes) toobig = 1
    if (toobig) exit
    depth = 1
    st_ind[1] = 0
    st_kind[1] = "M"
    st_path[1] = ""
    st_n[1] = 0
    pend = 0
    blk = 0
    content_seen = 0
    # Regexes are written as literals where they are used: busybox awk compiles a regex given as a
    # string again at every match (UTF8_RE is only used on lines with a byte over 127).
    UTF8_RE = "^([\001-\177]|[\302-\337][\200-\277]|\340[\240-\277][\200-\277]|[\341-\354\356\357][\200-\277][\200-\277]|\355[\200-\237][\200-\277]|\360[\220-\277][\200-\277][\200-\277]|[\361-\363][\200-\277][\200-\277][\200-\277]|\364[\200-\217][\200-\277][\200-\277])*$"
    BOM = "\357\273\277"
    SSH_TYPES = " ssh-ed25519 ssh-rsa ecdsa-sha2-nistp256 ecdsa-sha2-nistp384 ecdsa-sha2-nistp521 sk-ssh-ed25519@openssh.com sk-ecdsa-sha2-nistp256@openssh.com "
}

function perr(line, key, msg) {
    if (err) return
    err = 1
    diag("ERROR", line, key, msg)
}

function diag(level, line, key, msg) {
    nd++
    d_level[nd] = level
    d_line[nd] = line
    d_key[nd] = key
    d_msg[nd] = msg
}

# parent: the path of the container holding the node ("" at the top level).
function emit(kind, line, path, value, parent) {
    nn++
    n_kind[nn] = kind
    n_line[nn] = line
    n_path[nn] = path
    n_val[nn] = value
    n_parent[nn] = (parent in bypath) ? bypath[parent] : 0
    bypath[path] = nn
}

# join(a, lo, hi, sep): a[lo] sep ... sep a[hi], by halves (repeated concatenation is quadratic).
function join(a, lo, hi, sep,    mid) {
    if (lo > hi) return ""
    if (lo == hi) return a[lo]
    mid = int((lo + hi) / 2)
    return join(a, lo, mid, sep) sep join(a, mid + 1, hi, sep)
}

# replace_all(s, sep, by): every sep (one character) in s replaced with by, in linear time.
function replace_all(s, sep, by,    parts, n) {
    if (index(s, sep) == 0) return s
    # A one-character separator is literal, except a backslash: that one is given as a regex.
    n = split(s, parts, sep == "\\" ? "\\\\" : sep)
    return join(parts, 1, n, by)
}

function esc(s) {
    s = replace_all(s, "\\", "\\\\")
    s = replace_all(s, "\n", "\\n")
    return replace_all(s, "\t", "\\t")
}

function rstrip(s) {
    sub(/[ \t]+$/, "", s)
    return s
}

function strip_sp(s) {
    sub(/^ +/, "", s)
    sub(/ +$/, "", s)
    return s
}

function child(parent, key) {
    return parent == "" ? key : parent "." key
}

function finish_block(    last, value) {
    last = b_n
    while (last > 0 && b_lines[last] == "") last--
    value = join(b_lines, 1, last, "\n")
    if (last > 0 && !b_strip) value = value "\n"
    emit("B", b_line, b_path, value, b_parentpath)
    blk = 0
}

# Sets sc_kind (P or Q) and sc_val; returns 0 (after perr) on a syntax error.
function parse_scalar(text, line, key, in_flow,    first, out, body, nxt, closed, rest, seg, n, k, seps, sep, o, no, used) {
    first = substr(text, 1, 1)
    if (first == "\"" || first == "'") {
        # Linear in the line, and fast: the value is split at its special characters (the quote, and
        # the backslash in "..."), each piece is copied once into o[] and o[] joined once. seps holds
        # the special characters in order (sep[k] follows seg[k]). No per-character loop: busybox
        # awk's substr() measures the whole string each time.
        body = substr(text, 2)
        seps = body
        if (first == "'") {
            n = split(body, seg, "'")
            gsub(/[^']/, "", seps)
        } else {
            n = split(body, seg, /["\\]/)
            gsub(/[^"\\]/, "", seps)
        }
        split(seps, sep, "")
        no = 0
        used = 0
        closed = 0
        k = 1
        while (k <= n) {
            if (seg[k] != "") o[++no] = seg[k]
            used += length(seg[k])
            if (k == n) break
            used++
            if (sep[k] == first) {
                # '' inside '...' is one quote: an empty piece between two quotes, not the last one.
                if (first == "'" && seg[k + 1] == "" && k + 1 < n) {
                    o[++no] = "'"
                    used++
                    k += 2
                    continue
                }
                closed = 1
                break
            }
            # A backslash in "...": the escaped character is the next special one (when the piece after
            # the backslash is empty) or the first character of the next piece.
            if (seg[k + 1] == "" && k + 1 < n) nxt = sep[k + 1]
            else nxt = substr(seg[k + 1], 1, 1)
            if (nxt == "\\") o[++no] = "\\"
            else if (nxt == "\"") o[++no] = "\""
            else if (nxt == "n") o[++no] = "\n"
            else if (nxt == "t") o[++no] = "\t"
            else {
                perr(line, key, "unsupported escape '\\" nxt "' in a double-quoted value")
                return 0
            }
            used++
            if (seg[k + 1] == "" && k + 1 < n) {
                k += 2
            } else {
                seg[k + 1] = substr(seg[k + 1], 2)
                k++
            }
        }
        out = join(o, 1, no, "")
        if (!closed) {
            perr(line, key, "unterminated quoted value (quotes must close on the same line)")
            return 0
        }
        rest = substr(body, used + 1)
        if (rest !~ /^[ \t]*$/ && rest !~ /^ +#/) {
            perr(line, key, "unexpected text after the closing quote")
            return 0
        }
        sc_kind = "Q"
        sc_val = out
        return 1
    }
    if (first != "" && index("&*!%@`{|>", first) > 0) {
        perr(line, key, "a value starting with '" first "' is not supported: quote the value")
        return 0
    }
    if (in_flow && first == "[") {
        perr(line, key, "nested lists are not supported")
        return 0
    }
    if (text == "-" || substr(text, 1, 2) == "- ") {
        perr(line, key, "a value starting with '- ' is not supported: quote the value")
        return 0
    }
    pos = index(text, " #")
    if (pos > 0) text = substr(text, 1, pos - 1)
    sub(/ +$/, "", text)
    if (index(text, ": ") > 0 || text ~ /:$/) {
        perr(line, key, "': ' inside a plain value: quote the value")
        return 0
    }
    sc_kind = "P"
    sc_val = text
    return 1
}

function handle(number, text,    spaces, stripped, key_here, content, path, indent, line, kind, parent) {
    if (text ~ /[\200-\377]/ && text !~ UTF8_RE) {
        perr(number, "", "not valid UTF-8 text (save the file as UTF-8)")
        return
    }
    sub(/\r$/, "", text)
    match(text, /^ */)
    spaces = RLENGTH
    if (blk) {
        if (text ~ /^ *$/) {
            b_n++
            b_lines[b_n] = b_indent ? substr(text, b_indent + 1) : ""
            return
        }
        if (!b_indent && spaces > b_parent) b_indent = spaces
        if (b_indent && spaces >= b_indent) {
            b_n++
            b_lines[b_n] = substr(text, b_indent + 1)
            return
        }
        finish_block()
    }
    stripped = text
    sub(/^[ \t]+/, "", stripped)
    if (stripped == "" || substr(stripped, 1, 1) == "#") return
    if (text == "---" && !content_seen) return
    content_seen = 1
    key_here = st_path[depth]
    if (substr(text, spaces + 1, 1) == "\t") {
        perr(number, pend ? pend_path : key_here, "tab character in the indentation (use spaces)")
        return
    }
    if (text == "---" || text == "...") {
        perr(number, key_here, "only one YAML document is supported")
        return
    }
    content = rstrip(substr(text, spaces + 1))
    if (pend) {
        path = pend_path
        indent = pend_ind
        line = pend_line
        parent = pend_parent
        pend = 0
        if (spaces == indent + 2) {
            kind = (content == "-" || substr(content, 1, 2) == "- ") ? "L" : "M"
            emit(kind, line, path, "", parent)
            depth++
            st_ind[depth] = spaces
            st_kind[depth] = kind
            st_path[depth] = path
            st_n[depth] = 0
        } else if (spaces > indent) {
            perr(number, path, "indent nested entries by exactly 2 spaces (expected " (indent + 2) ")")
            return
        } else {
            emit("Z", line, path, "", parent)
        }
    }
    while (depth > 1 && st_ind[depth] > spaces) depth--
    if (st_ind[depth] != spaces) {
        perr(number, st_path[depth], "unexpected indentation of " spaces " spaces (expected " st_ind[depth] ")")
        return
    }
    if (st_kind[depth] == "M") map_entry(number, depth, content, spaces)
    else list_item(number, depth, content, spaces)
}

function map_entry(number, d, content, indent,    key, path) {
    if (content !~ /^[A-Za-z0-9_.\/-]+:( |$)/) {
        if (content == "-" || substr(content, 1, 2) == "- ") {
            perr(number, st_path[d], "a list item where a 'key: value' entry is expected")
        } else {
            perr(number, st_path[d], "expected 'key: value'")
        }
        return
    }
    key = substr(content, 1, index(content, ":") - 1)
    path = child(st_path[d], key)
    if ((st_path[d] SUBSEP key) in seen) {
        perr(number, path, "duplicate key")
        return
    }
    seen[st_path[d] SUBSEP key] = 1
    rest = substr(content, length(key) + 2)
    sub(/^ +/, "", rest)
    value(number, path, rest, indent, st_path[d])
}

function list_item(number, d, content, indent,    path, rest) {
    if (!(content == "-" || substr(content, 1, 2) == "- ")) {
        perr(number, st_path[d], "expected a list item ('- ...')")
        return
    }
    path = st_path[d] "[" st_n[d] "]"
    st_n[d]++
    rest = substr(content, 3)
    if (rest == "" || substr(rest, 1, 1) == "#") {
        perr(number, path, "empty list item")
        return
    }
    if (substr(rest, 1, 1) == " ") {
        perr(number, path, "put exactly one space after '-'")
        return
    }
    if (rest ~ /^[A-Za-z0-9_.\/-]+:( |$)/) {
        emit("M", number, path, "", st_path[d])
        depth++
        st_ind[depth] = indent + 2
        st_kind[depth] = "M"
        st_path[depth] = path
        st_n[depth] = 0
        map_entry(number, depth, rest, indent + 2)
        return
    }
    value(number, path, rest, indent, st_path[d])
}

function value(number, path, rest, indent, parent,    end, after, inner, cnt, items, i, item, ipath) {
    if (rest == "" || substr(rest, 1, 1) == "#") {
        pend = 1
        pend_path = path
        pend_parent = parent
        pend_ind = indent
        pend_line = number
        return
    }
    if (rest ~ /^[|](-?)( +#.*)?$/) {
        blk = 1
        b_path = path
        b_parentpath = parent
        b_parent = indent
        b_line = number
        b_strip = (substr(rest, 2, 1) == "-")
        b_indent = 0
        b_n = 0
        return
    }
    if (substr(rest, 1, 1) == ">") {
        perr(number, path, "folded block values ('>') are not supported: use '|'")
        return
    }
    if (substr(rest, 1, 1) == "[") {
        end = index(rest, "]")
        if (end == 0) {
            perr(number, path, "unterminated flow list ('[' without ']')")
            return
        }
        after = substr(rest, end + 1)
        if (after !~ /^[ \t]*$/ && after !~ /^ +#/) {
            perr(number, path, "unexpected text after the closing ']'")
            return
        }
        inner = substr(rest, 2, end - 2)
        emit("L", number, path, "", parent)
        if (inner ~ /^ *$/) return
        cnt = split(inner, items, ",")
        for (i = 1; i <= cnt; i++) {
            item = strip_sp(items[i])
            ipath = path "[" (i - 1) "]"
            if (item == "") {
                perr(number, ipath, "empty item in a flow list")
                return
            }
            if (!parse_scalar(item, number, ipath, 1)) return
            emit(sc_kind, number, ipath, sc_val, path)
        }
        return
    }
    if (!parse_scalar(rest, number, path, 0)) return
    emit(sc_kind, number, path, sc_val, parent)
}

{
    if (!size_known) total += length($0) + 1
    if (!toobig && maxbytes > 0 && total > maxbytes) toobig = 1
    if (toobig) exit
    if (NR == 1 && substr($0, 1, 3) == BOM) {
        if (!err) handle(NR, substr($0, 4))
    } else if (!err) handle(NR, $0)
}

# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

function is_ipv4(v,    p, n, i) {
    n = split(v, p, "[.]")
    if (n != 4) return 0
    for (i = 1; i <= 4; i++) {
        if (p[i] !~ /^[0-9]+$/ || length(p[i]) > 3 || (length(p[i]) > 1 && substr(p[i], 1, 1) == "0")) return 0
        if (p[i] + 0 > 255) return 0
    }
    return 1
}

function is_hostname(v, limit,    p, n, i) {
    if (v == "" || length(v) > limit || v !~ /^[a-z0-9.-]+$/) return 0
    n = split(v, p, "[.]")
    # split drops nothing: "a..b" gives an empty label, like Python's split.
    if (substr(v, 1, 1) == "." || substr(v, length(v), 1) == ".") return 0
    for (i = 1; i <= n; i++) {
        if (p[i] == "" || length(p[i]) > 63 || substr(p[i], 1, 1) == "-" || substr(p[i], length(p[i]), 1) == "-") return 0
    }
    return 1
}

function check_value(kind, type, v,    addr, prefix, slash, w, n, ls, i, ok) {
    if (type != "text" && type != "pem" && index(v, "\n") > 0) return "must be a single line"
    if (v == "" && type != "bool") return "must not be empty"
    if (type == "string" || type == "text" || type == "secret" || type == "sysctl_value") return ""
    # The node name: the kernel's limit (sethostname, HOST_NAME_MAX) is 64 characters.
    if (type == "hostname") return is_hostname(v, 64) ? "" : "not a lowercase RFC 1123 host name of at most 64 characters"
    if (type == "host") return (is_ipv4(v) || is_hostname(tolower(v), 253)) ? "" : "not a host name or IPv4 address"
    if (type == "ifname") return (v ~ /^[A-Za-z0-9_.-]+$/ && length(v) <= 15) ? "" : "not an interface name (at most 15 of A-Z a-z 0-9 _ . -)"
    if (type == "mac") return (v ~ /^[0-9A-Fa-f][0-9A-Fa-f](:[0-9A-Fa-f][0-9A-Fa-f])+$/ && length(v) == 17) ? "" : "not a MAC address (xx:xx:xx:xx:xx:xx)"
    if (type == "bool") return (kind == "P" && (v == "true" || v == "false")) ? "" : "must be true or false (unquoted)"
    if (type == "ipv4") return is_ipv4(v) ? "" : "not an IPv4 address"
    if (type == "cidr4") {
        slash = index(v, "/")
        if (slash > 0) {
            addr = substr(v, 1, slash - 1)
            prefix = substr(v, slash + 1)
        } else {
            addr = v
            prefix = ""
        }
        ok = is_ipv4(addr) && prefix ~ /^[0-9]+$/ && length(prefix) <= 2 && (prefix == "0" || substr(prefix, 1, 1) != "0") && prefix + 0 >= 1 && prefix + 0 <= 32
        return ok ? "" : "not an IPv4 address with prefix (10.0.0.5/24)"
    }
    if (type == "url") return (v ~ /^https?:\/\/[^ \t]+$/) ? "" : "not an http:// or https:// URL"
    if (type == "noproxy") return (v ~ /^[^ \t,]+$/) ? "" : "must not contain spaces or commas"
    if (type == "sshkey") {
        n = split(v, w, "[ ]")
        ok = n >= 2 && index(SSH_TYPES, " " w[1] " ") > 0 && w[1] != "" && w[2] ~ /^[A-Za-z0-9+\/=]+$/ && length(w[2]) >= 16
        return ok ? "" : "not an OpenSSH public key ('ssh-ed25519 AAAA... comment')"
    }
    if (type == "pem") {
        n = split(v, ls, "\n")
        ok = 0
        if (ls[1] == "-----BEGIN CERTIFICATE-----") {
            for (i = 2; i <= n; i++) if (ls[i] == "-----END CERTIFICATE-----") ok = 1
        }
        return ok ? "" : "not a PEM certificate (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)"
    }
    if (type == "flag") return check_flag(v)
    if (type == "path") {
        if (v !~ /^\/[A-Za-z0-9._@+\/-]*[A-Za-z0-9._@+-]$/ || index(v, "//") || index(v, "/./") || index(v, "/../") || v ~ /\/\.$/ || v ~ /\/\.\.$/) return "not a clean absolute path"
        for (i = 1; i <= ndirs; i++) if (substr(v, 1, length(dirs[i]) + 1) == dirs[i] "/") return ""
        w[1] = ""
        for (i = 1; i <= ndirs; i++) w[1] = w[1] (i > 1 ? " " : "") dirs[i]
        return "must be below one of " w[1]
    }
    if (type == "mode") return (v ~ /^0?[0-7][0-7][0-7]$/) ? "" : "not an octal mode ('0644')"
    return "unknown type " type
}

# A node below a skipped node (unknown key, wrong kind) is skipped too: its parent says so.
function under(i) {
    return n_parent[i] > 0 && (skipped[n_parent[i]] || hidden[n_parent[i]])
}

function add_skip(i) {
    skipped[i] = 1
}

function validate(    i, path, norm, type, k, key, pat, name, msg, kind) {
    for (i = 1; i <= nn; i++) {
        path = n_path[i]
        if (under(i)) {
            hidden[i] = 1
            continue
        }
        norm = path
        gsub(/\[[0-9]+\]/, "[]", norm)
        type = ""
        if (norm in sk_type) type = sk_type[norm]
        else {
            for (k = 1; k <= nmapany; k++) {
                key = mapany[k]
                if (substr(norm, 1, length(key) + 1) == key ".") {
                    type = sk_type[key ".*"]
                    pat = sk_pat[key]
                    if (pat == "") pat = "^.+$"
                    name = substr(norm, length(key) + 2)
                    if (name !~ pat) type = "badname"
                    break
                }
            }
        }
        if (type == "") {
            diag("WARN", n_line[i], path, "unknown key: ignored")
            add_skip(i)
            continue
        }
        if (type == "badname") {
            diag("ERROR", n_line[i], path, "invalid name")
            add_skip(i)
            continue
        }
        kind = n_kind[i]
        if (type == "map" || type == "map_any") {
            if (kind != "M" && kind != "Z") {
                diag("ERROR", n_line[i], path, "must be a mapping ('key: value' entries)")
                add_skip(i)
            }
            continue
        }
        if (type == "list") {
            if (kind != "L" && kind != "Z") {
                diag("ERROR", n_line[i], path, "must be a list")
                add_skip(i)
            }
            continue
        }
        if (kind == "M" || kind == "L") {
            diag("ERROR", n_line[i], path, "must be a single value, not a mapping or list")
            add_skip(i)
            continue
        }
        if (kind == "Z") {
            diag("ERROR", n_line[i], path, "has no value")
            continue
        }
        msg = check_value(kind, type, n_val[i])
        if (msg != "") diag("ERROR", n_line[i], path, msg)
    }
    # Rules that involve several keys: data of the schema (R rows).
    check_rules()
    check_flag_repeats()
}

# ---------------------------------------------------------------------------------------------
# The schema's cross-key rules (files/cloud-init-schema.yml `rules:`, rendered as R rows), the same as
# check_rules of the Python side: on each mapping whose key (indexes as []) is the rule's mapping.
# ---------------------------------------------------------------------------------------------
function load_rule_row(sf,    n, i) {
    if (sf[3] !~ /^(exclusive|at_most_one_without|required|required_unless|forbidden_if|together)$/) {
        perr(0, "", "unknown rule " sf[3] " in the schema " schema)
        return
    }
    nrules++
    r_map[nrules] = sf[2]
    r_rule[nrules] = sf[3]
    n = split(sf[4], r_tmp, " ")
    r_nkeys[nrules] = n
    for (i = 1; i <= n; i++) {
        r_key[nrules, i] = r_tmp[i]
        # The K rows come first in the schema file.
        r_list[nrules, i] = ((sf[2] "." r_tmp[i]) in sk_type) && sk_type[sf[2] "." r_tmp[i]] == "list"
    }
    r_ifkey[nrules] = sf[5]
    r_ifval[nrules] = sf[6]
    r_msg[nrules] = sf[7]
}

# rule_given(r, k, p): 1 when key k of rule r is given in mapping p (a list: with at least one item).
function rule_given(r, k, p,    path) {
    path = p "." r_key[r, k]
    if (r_list[r, k]) path = path "[0]"
    return (path in bypath)
}

function check_rules(    i, p, norm, r, k, ngiven, first, sw, switched, path, line) {
    for (i = 1; i <= nn; i++) {
        if (n_kind[i] != "M" || hidden[i]) continue
        p = n_path[i]
        norm = p
        gsub(/\[[0-9]+\]/, "[]", norm)
        for (r = 1; r <= nrules; r++) {
            if (r_map[r] != norm) continue
            ngiven = 0
            first = 0
            for (k = 1; k <= r_nkeys[r]; k++) {
                if (rule_given(r, k, p)) {
                    ngiven++
                    if (!first) first = k
                }
            }
            sw = (r_ifkey[r] != "" && ((p "." r_ifkey[r]) in bypath)) ? bypath[p "." r_ifkey[r]] : 0
            switched = (sw && n_kind[sw] == "P" && n_val[sw] == r_ifval[r])
            if (r_rule[r] == "exclusive") {
                if (ngiven > 1) diag("ERROR", n_line[i], p, r_msg[r])
            } else if (r_rule[r] == "at_most_one_without") {
                if (ngiven == 0) {
                    if (without_seen[r]) diag("ERROR", n_line[i], p, r_msg[r])
                    without_seen[r] = 1
                }
            } else if (r_rule[r] == "required" || (r_rule[r] == "required_unless" && !switched)) {
                for (k = 1; k <= r_nkeys[r]; k++) {
                    if (rule_given(r, k, p)) continue
                    path = p "." r_key[r, k]
                    line = (path in bypath) ? n_line[bypath[path]] : n_line[i]
                    diag("ERROR", line, path, r_msg[r])
                }
            } else if (r_rule[r] == "forbidden_if") {
                if (!switched) continue
                for (k = 1; k <= r_nkeys[r]; k++) {
                    path = p "." r_key[r, k]
                    if (path in bypath) diag("ERROR", n_line[bypath[path]], path, r_msg[r])
                }
            } else if (r_rule[r] == "together" && ngiven > 0 && ngiven < r_nkeys[r]) {
                line = n_line[bypath[p "." r_key[r, first]]]
                for (k = 1; k <= r_nkeys[r]; k++) {
                    if (!rule_given(r, k, p)) diag("ERROR", line, p "." r_key[r, k], r_msg[r])
                }
            }
        }
    }
}

# ---------------------------------------------------------------------------------------------
# KubeSolo's flags (files/kubesolo-flags.yml, rendered into the schema file as
#   F<TAB>name<TAB>type<TAB>boot   BT<TAB>true word   BF<TAB>false word)
# The items of kubesolo.flags: the same rules as module_utils/cloudinit.py (check_flag,
# check_flag_repeats) and stage 90's argument builder (ksi_kubesolo_args in functions.sh).
# ---------------------------------------------------------------------------------------------

function load_flag_row(sf) {
    if (sf[1] == "F") {
        fl_type[sf[2]] = sf[3]
        fl_boot[sf[2]] = sf[4]
        if (sf[4] == "1") fl_known = fl_known (fl_known == "" ? "" : ", ") "--" sf[2]
    } else if (sf[1] == "BT") {
        fl_true[sf[2]] = 1
    } else if (sf[1] == "BF") {
        fl_false[sf[2]] = 1
    }
}

# The table name an item sets (--no-x sets x); "" when the item names no known flag.
function flag_base(v,    name, eq) {
    if (substr(v, 1, 2) != "--") return ""
    name = substr(v, 3)
    eq = index(name, "=")
    if (eq > 0) name = substr(name, 1, eq - 1)
    if (name in fl_type) return name
    if (substr(name, 1, 3) == "no-" && fl_type[substr(name, 4)] == "bool") return substr(name, 4)
    return ""
}

function check_flag(v,    name, eq, given, base, low) {
    if (substr(v, 1, 2) != "--") return "not a KubeSolo flag (--name or --name=value)"
    name = substr(v, 3)
    eq = index(name, "=")
    given = ""
    if (eq > 0) {
        given = substr(name, eq + 1)
        name = substr(name, 1, eq - 1)
    }
    if (name !~ /^[a-z0-9][a-z0-9-]*$/) return "not a KubeSolo flag (--name or --name=value)"
    base = flag_base(v)
    if (base == "") return "unknown KubeSolo flag --" name "; known flags: " fl_known
    if (fl_boot[base] != "1") return "--" name " makes KubeSolo print and exit: not allowed at boot"
    if (fl_type[base] == "bool") {
        if (base != name && eq > 0) return "--" name " takes no value"
        low = tolower(given)
        if (eq > 0 && !(low in fl_true) && !(low in fl_false)) return "--" name " is a boolean: write --" name ", --no-" name " or --" name "=true|false"
        return ""
    }
    if (eq == 0) return "--" name " needs a value: write --" name "=VALUE"
    if (fl_type[base] == "int" && given !~ /^-?[0-9]+$/) return "--" name " needs a whole number"
    return ""
}

function check_flag_repeats(    i, base, seen_flag) {
    for (i = 1; i <= nn; i++) {
        if (n_path[i] !~ /^kubesolo[.]flags[[][0-9]+[]]$/ || skipped[i] || hidden[i]) continue
        if ((n_kind[i] != "P" && n_kind[i] != "Q") || check_flag(n_val[i]) != "") continue
        base = flag_base(n_val[i])
        if (base in seen_flag) diag("ERROR", n_line[i], n_path[i], "--" base " is given more than once")
        seen_flag[base] = 1
    }
}

END {
    if (toobig) {
        # Nothing of a file over the limit is parsed or reported but this.
        printf "D\tERROR\t1\t\tthe file is larger than the maximum of %d bytes (docs/cloud-init.md)\n", maxbytes
        exit
    }
    if (!err) {
        if (blk) finish_block()
        if (pend) {
            emit("Z", pend_line, pend_path, "", pend_parent)
            pend = 0
        }
        validate()
    }
    for (i = 1; i <= nn; i++) printf "N\t%s\t%d\t%s\t%s\n", n_kind[i], n_line[i], n_path[i], esc(n_val[i])
    # Diagnostics by line, in the order they were made within a line (a stable bucket sort).
    maxline = 0
    for (i = 1; i <= nd; i++) {
        l = d_line[i] + 0
        bucket_n[l]++
        bucket[l, bucket_n[l]] = i
        if (l > maxline) maxline = l
    }
    for (l = 0; l <= maxline; l++) {
        for (j = 1; j <= bucket_n[l]; j++) {
            k = bucket[l, j]
            printf "D\t%s\t%d\t%s\t%s\n", d_level[k], d_line[k], d_key[k], d_msg[k]
        }
    }
}
