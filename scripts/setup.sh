#!/usr/bin/env bash
# fputrace set-up: installs what is missing and builds. Idempotent; `make setup`
# runs it, and `make demo` / `make test` run it first.
#
# What it does, in order:
#   1. system packages (QEMU >= 9.0 with TCG plugin support, compilers, tools);
#      on Debian 12 QEMU comes from bookworm-backports, whose URI is derived
#      from the machine's own apt configuration;
#   2. qemu-plugin.h matching the installed QEMU, from the Debian source
#      package, cached under ~/.cache/fputrace;
#   3. the Python package in a project venv (.venv);
#   4. the plugin, workloads and test images with meson.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cache=${FPUTRACE_CACHE:-$HOME/.cache/fputrace}
mkdir -p "$cache"

die() { echo "fputrace setup: $*" >&2; exit 1; }
log() { echo "fputrace setup: $*"; }

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || die "not root and no sudo: run as root, or install the packages scripts/setup.sh lists"
	sudo_cmd=(sudo)
fi

qemu_version_ok() {
	# QEMU 9.0 is the first with qemu_plugin_read_register(). Both targets:
	# x86_64 and aarch64 (--arch arm64) come from the same QEMU build.
	local v
	command -v qemu-system-x86_64 >/dev/null || return 1
	command -v qemu-system-aarch64 >/dev/null || return 1
	v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
	[ -n "$v" ] || return 1
	set -- $v
	[ "$1" -gt 9 ] || { [ "$1" -eq 9 ] && [ "$2" -ge 0 ]; }
}

# The URI of the machine's main Debian archive, read from its own apt sources.
debian_archive_uri() {
	local f uri=""
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		uri=$(awk '
			/^[ \t]*$/ { if (u != "" && s ~ /(^| )bookworm( |$)/) { print u; exit } u = ""; s = "" }
			/^URIs:/   { u = $2 }
			/^Suites:/ { $1 = ""; s = $0 " " }
			END        { if (u != "" && s ~ /(^| )bookworm( |$)/) print u }' "$f" | head -n 1)
		[ -n "$uri" ] && break
	done
	if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
		uri=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list)
	fi
	echo "$uri"
}

apt_updated=0
apt_update() {
	[ "$apt_updated" = 1 ] && return
	"${sudo_cmd[@]}" apt-get update -qq
	apt_updated=1
}

install_system_packages() {
	# libelf1: objtool of the kernels' kbuild, for the fputrace-seed test module.
	# lib32gcc-12-dev, libc6-dev-i386: the 32-bit (gcc -m32 -static) compat32
	# workload. Not gcc-multilib: Debian 12 does not let it be installed together
	# with gcc-aarch64-linux-gnu (each removes the other); gcc -m32 needs only these.
	# gcc-aarch64-linux-gnu: the arm64 workloads (static, cross-compiled).
	# tmux: the viewer's tests drive it in a terminal.
	# flex, bison, bc, libelf-dev, dwarves (pahole, for BTF), patch, libssl-dev
	# (Debian's configuration signs modules): kernels built from Debian's linux
	# source with the user's patches (fputrace/kernel/build.py, the bug zoo).
	local pkgs=(gcc lib32gcc-12-dev libc6-dev-i386 libc6-dev binutils make meson ninja-build
		pkg-config libglib2.0-dev busybox-static cpio xz-utils zstd dpkg-dev python3-venv
		libelf1 gcc-aarch64-linux-gnu libc6-dev-arm64-cross tmux
		flex bison bc libelf-dev dwarves patch libssl-dev)
	local missing=() p
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt_update
		DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
	fi

	if qemu_version_ok && [ -n "$(qemu_deb_version)" ] && deb_src_enabled; then
		return
	fi
	if qemu_version_ok && ! command -v dpkg-query >/dev/null; then
		return
	fi
	. /etc/os-release
	if [ "${VERSION_CODENAME:-}" = bookworm ]; then
		local uri list=/etc/apt/sources.list.d/fputrace-bookworm-backports.sources
		uri=$(debian_archive_uri)
		[ -n "$uri" ] || die "no Debian bookworm entry in the apt sources: add one, or install QEMU >= 9.0 with plugin support"
		if [ ! -f "$list" ] || ! grep -q "^URIs: $uri\$" "$list"; then
			log "adding bookworm-backports (for QEMU >= 9.0) from $uri"
			printf 'Types: deb deb-src\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
				"$uri" | "${sudo_cmd[@]}" tee "$list" >/dev/null
			apt_updated=0
		fi
		if ! qemu_version_ok; then
			apt_update
			log "installing QEMU from bookworm-backports"
			DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
				-t bookworm-backports qemu-system-x86 qemu-system-arm >/dev/null
		fi
	elif ! qemu_version_ok; then
		die "QEMU >= 9.0 with TCG plugin support is required: install qemu-system-x86 and qemu-system-arm 9.0 or newer"
	fi
	qemu_version_ok || die "QEMU >= 9.0 is required but qemu-system-x86_64 reports $(qemu-system-x86_64 --version | head -n 1)"
}

qemu_deb_version() {
	dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true
}

deb_src_enabled() {
	grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ || grep -qs '^deb-src' /etc/apt/sources.list
}

# qemu-plugin.h of exactly the installed QEMU, contrib/plugins/execlog.c
# (bench/overhead compares against it) and scripts/checkpatch.pl (make lint
# checks plugin/ with it). Prints the directory.
fetch_plugin_header() {
	local deb_ver upstream dir tmp
	if [ -n "${QEMU_PLUGIN_HEADER_DIR:-}" ]; then
		[ -f "$QEMU_PLUGIN_HEADER_DIR/qemu-plugin.h" ] || die "QEMU_PLUGIN_HEADER_DIR=$QEMU_PLUGIN_HEADER_DIR has no qemu-plugin.h"
		echo "$QEMU_PLUGIN_HEADER_DIR"; return
	fi
	deb_ver=$(qemu_deb_version)
	[ -n "$deb_ver" ] || die "QEMU is not a Debian package here: set QEMU_PLUGIN_HEADER_DIR to the directory holding its qemu-plugin.h"
	upstream=${deb_ver#*:}
	upstream=${upstream%%+*}
	upstream=${upstream%%-*}
	dir=$cache/qemu-plugin-header/$upstream
	if [ ! -f "$dir/qemu-plugin.h" ] || [ ! -f "$dir/execlog.c" ] || [ ! -f "$dir/checkpatch.pl" ]; then
		log "fetching qemu-plugin.h of QEMU $upstream (source package qemu=$deb_ver)" >&2
		apt_update >&2
		tmp=$(mktemp -d)
		chmod 755 "$tmp"
		# The .debian.tar.xz part may be missing from the archive; only the
		# orig tarball matters, so a failed download of the rest is ignored.
		(cd "$tmp" && apt-get source --download-only -qq "qemu=$deb_ver" >/dev/null 2>&1) || true
		local orig
		orig=$(ls "$tmp"/qemu_*.orig.tar.* 2>/dev/null | head -n 1)
		[ -n "$orig" ] || die "could not download the qemu $deb_ver source package: enable deb-src for its suite, or set QEMU_PLUGIN_HEADER_DIR"
		mkdir -p "$dir"
		tar -xf "$orig" -C "$tmp" --wildcards '*/include/qemu/qemu-plugin.h' \
			'*/contrib/plugins/execlog.c' '*/scripts/checkpatch.pl'
		mv "$tmp"/*/include/qemu/qemu-plugin.h "$dir/qemu-plugin.h"
		mv "$tmp"/*/contrib/plugins/execlog.c "$dir/execlog.c"
		mv "$tmp"/*/scripts/checkpatch.pl "$dir/checkpatch.pl"
		rm -rf "$tmp"
	fi
	echo "$dir"
}

setup_venv() {
	local venv=$top/.venv stamp
	stamp=$venv/.fputrace-installed
	if [ ! -x "$venv/bin/python" ]; then
		log "creating $venv"
		python3 -m venv "$venv"
	fi
	if [ ! -f "$stamp" ] || [ "$top/pyproject.toml" -nt "$stamp" ]; then
		log "installing the Python package and its dependencies"
		"$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
		"$venv/bin/pip" install -q -e "$top[dev]" >"$venv/pip-install.log" 2>&1 ||
			die "pip install failed; see $venv/pip-install.log"
		touch "$stamp"
	fi
}

build() {
	local hdr=$1
	if [ ! -f "$top/build/build.ninja" ]; then
		meson setup "$top/build" "$top" -Dqemu_plugin_header_dir="$hdr" >/dev/null
	else
		meson configure "$top/build" -Dqemu_plugin_header_dir="$hdr" >/dev/null
	fi
	ninja -C "$top/build" >/dev/null
}

install_system_packages
hdr=$(fetch_plugin_header)
setup_venv
build "$hdr"
log "ready: $(qemu-system-x86_64 --version | head -n 1); plugin build/libfputrace.so"
