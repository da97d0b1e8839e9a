# shellcheck shell=bash
# The stamp / compare / replace steps of a build output made by a shell task (bash), in one place.
# Sourced by the tasks that make a large file from recorded inputs (roles/initramfs: the initramfs files,
# roles/kubesolo: the system image; docs/architecture.md lists the others). An output is made again only
# when its inputs or the file itself changed since the last time it was written or checked, and replaced
# only when its bytes differ, so a no-op build neither reads nor rewrites it.
#
#   if output_current OUT STAMP INPUTS; then echo unchanged; exit 0; fi
#   ... make NEW ...
#   output_replace NEW OUT          # prints written or unchanged
#   output_stamp OUT STAMP INPUTS

# output_identity OUT: size, inode and modification time (ns) of OUT: any rewrite changes them.
output_identity() {
    stat -c '%s %i %.9Y' -- "$1"
}

# output_current OUT STAMP INPUTS: true when OUT exists and STAMP records INPUTS with OUT's identity.
output_current() {
    [ -f "$1" ] && [ -f "$2" ] && [ "$(cat -- "$2")" = "$3 $(output_identity "$1")" ]
}

# output_stamp OUT STAMP INPUTS: records INPUTS with OUT's identity in STAMP.
output_stamp() {
    printf '%s %s\n' "$3" "$(output_identity "$1")" >"$2"
}

# output_replace NEW OUT: NEW is renamed over OUT unless OUT holds the same bytes (NEW is removed then,
# and OUT keeps its identity). Prints written or unchanged.
output_replace() {
    if cmp -s -- "$1" "$2"; then
        rm -f -- "$1"
        echo unchanged
    else
        mv -f -- "$1" "$2"
        echo written
    fi
}
