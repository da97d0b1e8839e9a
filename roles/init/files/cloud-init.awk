# /usr/lib/kubesolo-os/cloud-init.awk: parser and validator of KubeSolo OS cloud-init files
# (the YAML subset of docs/cloud-init.md), for busybox awk. Copied by the Ansible role `init`.
#
#   awk -v schema=/usr/lib/kubesolo-os/cloud-init.schema -f cloud-init.awk FILE
#
# The SAME algorithm as the Python side (collection kubesolo.os, module_utils/cloudinit.py):
# both print the same records for the same file (tests/test_cloudinit.py checks every fixture).
#   N<TAB>kind<TAB>line<TAB>path<TAB>value   kind: M mapping, L list, Z null, P plain, Q quoted,
#                                            B block scalar; value escaped (\\ \n \t)
#   D<TAB>level<TAB>line<TAB>key<TAB>message level ERROR or WARN; messages never hold values
# The schema file (rendered from files/cloud-init-schema.yml) has lines
#   K<TAB>key<TAB>type<TAB>key_pattern   and   P<TAB>persistent directory
# Parsing stops at the first syntax error (one ERROR record). Data is never evaluated.

BEGIN {
    TAB = "\t"
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
        } else {
            load_flag_row(sf)
        }
    }
    close(schema)
    if (nsk == 0) {
        perr(0, "", "cannot read the schema " schema)
    }
    depth = 1
    st_ind[1] = 0
    st_kind[1] = "M"
    st_path[1] = ""
    st_n[1] = 0
    pend = 0
    blk = 0
    content_seen = 0
    nn = 0
    nd = 0
    KEY_RE = "^[A-Za-z0-9_./-]+:( |$)"
    BLOCK_RE = "^[|](-?)( +#.*)?$"
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

function emit(kind, line, path, value) {
    nn++
    n_kind[nn] = kind
    n_line[nn] = line
    n_path[nn] = path
    n_val[nn] = value
    bypath[path] = nn
}

function esc(s,    out, i, c) {
    out = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\\") out = out "\\\\"
        else if (c == "\n") out = out "\\n"
        else if (c == "\t") out = out "\\t"
        else out = out c
    }
    return out
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

function finish_block(    i, last, value) {
    last = b_n
    while (last > 0 && b_lines[last] == "") last--
    value = ""
    for (i = 1; i <= last; i++) value = value (i > 1 ? "\n" : "") b_lines[i]
    if (last > 0 && !b_strip) value = value "\n"
    emit("B", b_line, b_path, value)
    blk = 0
}

# Sets sc_kind (P or Q) and sc_val; returns 0 (after perr) on a syntax error.
function parse_scalar(text, line, key, in_flow,    first, out, i, c, nxt, closed, rest, pos) {
    first = substr(text, 1, 1)
    if (first == "\"" || first == "'") {
        out = ""
        i = 2
        closed = 0
        while (i <= length(text)) {
            c = substr(text, i, 1)
            if (first == "'" && c == "'") {
                if (substr(text, i + 1, 1) == "'") {
                    out = out "'"
                    i += 2
                    continue
                }
                closed = 1
                break
            }
            if (first == "\"" && c == "\"") {
                closed = 1
                break
            }
            if (first == "\"" && c == "\\") {
                nxt = substr(text, i + 1, 1)
                if (nxt == "\\") out = out "\\"
                else if (nxt == "\"") out = out "\""
                else if (nxt == "n") out = out "\n"
                else if (nxt == "t") out = out "\t"
                else {
                    perr(line, key, "unsupported escape '\\" nxt "' in a double-quoted value")
                    return 0
                }
                i += 2
                continue
            }
            out = out c
            i++
        }
        if (!closed) {
            perr(line, key, "unterminated quoted value (quotes must close on the same line)")
            return 0
        }
        rest = substr(text, i + 1)
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

function handle(number, text,    spaces, stripped, key_here, content, path, indent, line, kind) {
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
        pend = 0
        if (spaces == indent + 2) {
            kind = (content == "-" || substr(content, 1, 2) == "- ") ? "L" : "M"
            emit(kind, line, path, "")
            depth++
            st_ind[depth] = spaces
            st_kind[depth] = kind
            st_path[depth] = path
            st_n[depth] = 0
        } else if (spaces > indent) {
            perr(number, path, "indent nested entries by exactly 2 spaces (expected " (indent + 2) ")")
            return
        } else {
            emit("Z", line, path, "")
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
    if (content !~ KEY_RE) {
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
    value(number, path, rest, indent)
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
    if (rest ~ KEY_RE) {
        emit("M", number, path, "")
        depth++
        st_ind[depth] = indent + 2
        st_kind[depth] = "M"
        st_path[depth] = path
        st_n[depth] = 0
        map_entry(number, depth, rest, indent + 2)
        return
    }
    value(number, path, rest, indent)
}

function value(number, path, rest, indent,    end, after, inner, cnt, items, i, item, ipath) {
    if (rest == "" || substr(rest, 1, 1) == "#") {
        pend = 1
        pend_path = path
        pend_ind = indent
        pend_line = number
        return
    }
    if (rest ~ BLOCK_RE) {
        blk = 1
        b_path = path
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
        emit("L", number, path, "")
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
            emit(sc_kind, number, ipath, sc_val)
        }
        return
    }
    if (!parse_scalar(rest, number, path, 0)) return
    emit(sc_kind, number, path, sc_val)
}

{
    if (!err) handle(NR, $0)
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

function is_hostname(v,    p, n, i) {
    if (v == "" || length(v) > 253 || v !~ /^[a-z0-9.-]+$/) return 0
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
    if (type == "hostname") return is_hostname(v) ? "" : "not a lowercase RFC 1123 host name"
    if (type == "host") return (is_ipv4(v) || is_hostname(tolower(v))) ? "" : "not a host name or IPv4 address"
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

function under(path,    i, p) {
    for (i = 1; i <= nskip; i++) {
        p = skip[i]
        if (substr(path, 1, length(p) + 1) == p "." || substr(path, 1, length(p) + 1) == p "[") return 1
    }
    return 0
}

function add_skip(path) {
    nskip++
    skip[nskip] = path
}

function validate(    i, path, norm, type, k, key, pat, name, msg, kind, p, dhcp, sub_i, subs, o, line, has_id, has_key, present, missing) {
    nskip = 0
    for (i = 1; i <= nn; i++) {
        path = n_path[i]
        if (under(path)) continue
        norm = path
        gsub(/\[[0-9]+\]/, "[]", norm)
        type = ""
        if (norm in sk_type) type = sk_type[norm]
        else {
            for (k = 1; k <= nsk; k++) {
                key = sk_order[k]
                if (sk_type[key] == "map_any" && substr(norm, 1, length(key) + 1) == key "." && ((key ".*") in sk_type)) {
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
            add_skip(path)
            continue
        }
        if (type == "badname") {
            diag("ERROR", n_line[i], path, "invalid name")
            add_skip(path)
            continue
        }
        kind = n_kind[i]
        if (type == "map" || type == "map_any") {
            if (kind != "M" && kind != "Z") {
                diag("ERROR", n_line[i], path, "must be a mapping ('key: value' entries)")
                add_skip(path)
            }
            continue
        }
        if (type == "list") {
            if (kind != "L" && kind != "Z") {
                diag("ERROR", n_line[i], path, "must be a list")
                add_skip(path)
            }
            continue
        }
        if (kind == "M" || kind == "L") {
            diag("ERROR", n_line[i], path, "must be a single value, not a mapping or list")
            add_skip(path)
            continue
        }
        if (kind == "Z") {
            diag("ERROR", n_line[i], path, "has no value")
            continue
        }
        msg = check_value(kind, type, n_val[i])
        if (msg != "") diag("ERROR", n_line[i], path, msg)
    }
    # Rules that involve several keys.
    for (i = 1; i <= nn; i++) {
        if (n_kind[i] != "M" || under(n_path[i])) continue
        p = n_path[i]
        norm = p
        gsub(/\[[0-9]+\]/, "[]", norm)
        if (norm == "network.interfaces[]") {
            if (((p ".name") in bypath) == ((p ".mac") in bypath)) diag("ERROR", n_line[i], p, "needs exactly one of name or mac")
            dhcp = ((p ".dhcp") in bypath) ? bypath[p ".dhcp"] : 0
            if (dhcp && n_val[dhcp] == "true" && n_kind[dhcp] == "P") {
                subs[1] = "addresses"
                subs[2] = "gateway"
                for (sub_i = 1; sub_i <= 2; sub_i++) {
                    if ((p "." subs[sub_i]) in bypath) {
                        o = bypath[p "." subs[sub_i]]
                        diag("ERROR", n_line[o], n_path[o], "not allowed with dhcp: true")
                    }
                }
            } else if (!((p ".addresses[0]") in bypath)) {
                line = ((p ".addresses") in bypath) ? n_line[bypath[p ".addresses"]] : n_line[i]
                diag("ERROR", line, p ".addresses", "required unless dhcp: true")
            }
        } else if (norm == "write_files[]") {
            if (!((p ".path") in bypath)) diag("ERROR", n_line[i], p ".path", "required")
            if (!((p ".content") in bypath)) diag("ERROR", n_line[i], p ".content", "required")
        } else if (norm == "kubesolo") {
            has_id = (p ".portainer_edge_id") in bypath
            has_key = (p ".portainer_edge_key") in bypath
            if (has_id != has_key) {
                present = bypath[p (has_id ? ".portainer_edge_id" : ".portainer_edge_key")]
                missing = p (has_id ? ".portainer_edge_key" : ".portainer_edge_id")
                diag("ERROR", n_line[present], missing, "portainer_edge_id and portainer_edge_key must be given together")
            }
        }
    }
    check_flag_repeats()
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
        if (n_path[i] !~ /^kubesolo[.]flags[[][0-9]+[]]$/ || under(n_path[i])) continue
        if ((n_kind[i] != "P" && n_kind[i] != "Q") || check_flag(n_val[i]) != "") continue
        base = flag_base(n_val[i])
        if (base in seen_flag) diag("ERROR", n_line[i], n_path[i], "--" base " is given more than once")
        seen_flag[base] = 1
    }
}

END {
    if (!err) {
        if (blk) finish_block()
        if (pend) {
            emit("Z", pend_line, pend_path, "")
            pend = 0
        }
        validate()
    }
    for (i = 1; i <= nn; i++) printf "N\t%s\t%d\t%s\t%s\n", n_kind[i], n_line[i], n_path[i], esc(n_val[i])
    # Stable sort of the diagnostics by line.
    for (i = 1; i <= nd; i++) order[i] = i
    for (i = 2; i <= nd; i++) {
        k = order[i]
        j = i - 1
        while (j >= 1 && d_line[order[j]] > d_line[k]) {
            order[j + 1] = order[j]
            j--
        }
        order[j + 1] = k
    }
    for (i = 1; i <= nd; i++) {
        k = order[i]
        printf "D\t%s\t%d\t%s\t%s\n", d_level[k], d_line[k], d_key[k], d_msg[k]
    }
}
