#!/usr/bin/env bash
# Shell completion (bash, zsh) and the manual page modelfs(1), generated from the CLI's parser
# by `modelfs completion SHELL` and `modelfs manpage`, installed where bash-completion, zsh and
# man(1) look: under .venv/share always, and as root under /usr/local/share (and
# /etc/bash_completion.d when it exists). Written anew on every run (the commands may have
# changed); a directory that cannot be made or written is said and skipped, never a failure.
#   scripts/shell-support.sh [MODELFS] [ROOT]   (default .venv/bin/modelfs, /)
set -u
MODELFS=${1:-.venv/bin/modelfs}
ROOT=${2:-/}
ROOT=${ROOT%/}

put() {  # FILE COMMAND...: the command's output as FILE, replaced whole or not at all
    local file=$1
    shift
    if ! mkdir -p "$(dirname "$file")" 2>/dev/null; then
        echo "setup: cannot make $(dirname "$file"); skipped" >&2
        return 0
    fi
    if "$@" >"$file.tmp" 2>/dev/null && mv -f "$file.tmp" "$file" 2>/dev/null; then
        return 0
    fi
    rm -f "$file.tmp" 2>/dev/null
    echo "setup: could not write $file; skipped" >&2
    return 0
}

install_into() {  # MAN_DIR BASH_DIR ZSH_DIR
    put "$1/man1/modelfs.1" "$MODELFS" manpage
    put "$2/modelfs" "$MODELFS" completion bash
    put "$3/_modelfs" "$MODELFS" completion zsh
}

if [ ! -x "$MODELFS" ]; then
    echo "setup: $MODELFS is missing: no completion or man page installed" >&2
    exit 0
fi
VENV_SHARE=$(dirname "$(dirname "$MODELFS")")/share
install_into "$VENV_SHARE/man" "$VENV_SHARE/bash-completion/completions" "$VENV_SHARE/zsh/site-functions"
if [ "$(id -u)" -eq 0 ]; then
    bash_dir="$ROOT/usr/local/share/bash-completion/completions"
    # bash-completion loads /etc/bash_completion.d eagerly; /usr/local/share/... on demand.
    [ -d "$ROOT/etc/bash_completion.d" ] && bash_dir="$ROOT/etc/bash_completion.d"
    install_into "$ROOT/usr/local/share/man" "$bash_dir" "$ROOT/usr/local/share/zsh/site-functions"
fi
exit 0
