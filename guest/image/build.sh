#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Guest image builder: produces vmlinux, initramfs.cpio, rootfs.erofs, work-seed.ext4,
# cmdline and manifest.json (see docs/guest-image.md) from Debian packages only:
# `apt-get download` with the system's own apt configuration, then `dpkg-deb -x`.
# No maintainer scripts run and no mirror host name is written anywhere.
#
# Everything slow is cached outside the source tree, in
#   ${SBX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/schedulerd}/guest-image/
# with one directory per stage, named by a content hash of that stage's inputs:
#   debs/            downloaded .deb files (named by package and version)
#   kernel/<hash>    vmlinux (+ initramfs modules)    (script, kernel + source package versions,
#                                                      kernel.config or the module list)
#   tree/<hash>      the unpacked root tree           (script, package list, resolved versions)
#   image/<hash>     the final files                  (script, the two above, init/agent sha256)
# where "script" is the common part of this file plus the stage's own section.
# Each entry is built in a temporary directory and renamed into place, so an interrupted
# build leaves no half entry. A run with nothing changed only resolves versions, hashes
# and verifies (seconds). The --out symlink is replaced atomically.
#
# usage: build.sh --init PATH --out LINK [--agent PATH]
#   --init   the static PID 1 (guest/init/sbx-init)
#   --agent  the guest agent, put into the initramfs as /agent/sbx-agent, which init
#            bind-mounts at /usr/libexec/sbx (default: $SBX_AGENT;
#            without one the image boots to init, which reports the missing agent)
#   --out    symlink to (re)point at the image directory (e.g. build/guest/image/current)
# environment: SBX_CACHE_DIR, SBX_AGENT, SBX_KERNEL (build | debian: see stage 1),
#              SBX_NODEJS_VERSION (pin another Debian nodejs), SBX_WORK_SEED_MB (size of
#              work-seed.ext4, default 64), SBX_IMAGE_KEEP (unreferenced image entries
#              kept in the cache, default 3)
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
init_bin=""
agent_bin=${SBX_AGENT:-}
out_link=""
while [ $# -gt 0 ]; do
    case $1 in
        --init) init_bin=$2; shift 2 ;;
        --agent) agent_bin=$2; shift 2 ;;
        --out) out_link=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$init_bin" ] && [ -n "$out_link" ] || { echo "usage: build.sh --init PATH --out LINK [--agent PATH]" >&2; exit 2; }
[ -x "$init_bin" ] || { echo "build.sh: init binary $init_bin missing" >&2; exit 1; }
if [ -n "$agent_bin" ] && [ ! -x "$agent_bin" ]; then
    echo "build.sh: agent binary $agent_bin missing" >&2; exit 1
fi

log() { printf '[guest-image] %s\n' "$*"; }
die() { printf '[guest-image] error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
hash_stdin() { sha256sum | cut -c1-16; }

for tool in apt-get apt-cache dpkg-deb depmod modprobe lz4 strip objcopy readelf patchelf cpio mkfs.erofs mkfs.ext4 debugfs python3 flock; do
    command -v "$tool" >/dev/null || die "$tool not found (run ci/deps.sh)"
done

t_start=$(now)
cache=${SBX_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/var/cache}/.cache}/schedulerd}/guest-image
mkdir -p "$cache"/debs "$cache"/kernel "$cache"/tree "$cache"/image "$cache"/tmp
# One build at a time per cache (several build directories share it).
exec 9>"$cache/.lock"
flock 9
# Leftovers of an interrupted build are never entries (those are renamed into place).
rm -rf "${cache:?}"/tmp/* 2>/dev/null || true
work=$(mktemp -d "$cache/tmp/run.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Each stage's key covers the script text that shapes its output: the common part (up to
# stage 1) plus that stage's own section, so editing one stage does not rebuild the others.
section() { # n: 0 = common, 1..3 = stage n
    awk -v n="$1" '/^# --- stage [0-9]:/ { cur = substr($4, 1, 1) + 0 } (cur + 0) == n' "$here/build.sh"
}

# --- resolve versions -------------------------------------------------------------------
# The system's apt configuration and lists; only apt's binary package cache is kept in our
# cache (Debian container images often disable it, and then every apt-cache call re-parses
# all lists, ~0.7 s each). apt revalidates it against the lists and dpkg status itself.
mkdir -p "$cache/apt"
apt_opts=(-o "Dir::Cache::pkgcache=$cache/apt/pkgcache.bin" -o "Dir::Cache::srcpkgcache=")
apt-cache() { command apt-cache "${apt_opts[@]}" "$@"; }
apt-get() { command apt-get "${apt_opts[@]}" "$@"; }
kmeta=linux-image-cloud-amd64
resolve_kpkg() { apt-cache depends "$kmeta" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'; }
kpkg=$(resolve_kpkg)
if [ -z "$kpkg" ] && [ "$(id -u)" = 0 ]; then
    log "no $kmeta in the apt lists: running apt-get update..."
    command apt-get update -qq >/dev/null 2>&1 || true
    kpkg=$(resolve_kpkg)
fi
[ -n "$kpkg" ] || die "cannot resolve $kmeta (run apt-get update)"
krel=${kpkg#linux-image-}
candidate() { apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }'; }
kver=$(candidate "$kpkg")
[ -n "$kver" ] && [ "$kver" != "(none)" ] || die "no candidate for $kpkg"

# The newest nodejs 18.x that the archive offers (madison lists only downloadable versions).
node_ver=${SBX_NODEJS_VERSION:-$(apt-cache madison nodejs 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' \
    | grep -E '^18\.' | grep -v nodesource | sort -V | tail -n1)}
[ -n "$node_ver" ] || die "no Debian nodejs 18.x in the apt archive"

roots=() excludes=()
while read -r line; do
    line=${line%%#*}; line=${line//[[:space:]]/}
    [ -n "$line" ] || continue
    case $line in
        -*) excludes+=("${line#-}") ;;
        nodejs) roots+=("nodejs=$node_ver") ;;
        *) roots+=("$line") ;;
    esac
done < "$here/packages.list"

apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "${roots[@]}" 2>/dev/null \
    | grep -v '^[ <]' | sort -u > "$work/closure"
printf '%s\n' "${excludes[@]}" | sort -u > "$work/excludes"
comm -23 "$work/closure" "$work/excludes" > "$work/pkgs"
grep -qx nodejs "$work/pkgs" || die "package closure lacks nodejs"

# name=version for every package; nodejs is pinned (its apt candidate may be third-party).
# shellcheck disable=SC2046
apt-cache policy $(cat "$work/pkgs") 2>/dev/null | awk '
    /^[^ ]/ { sub(/:$/, ""); name = $0 }
    $1 == "Candidate:" { print name "=" $2 }' \
    | sed "s/^nodejs=.*/nodejs=$node_ver/" | sort > "$work/pkgvers"
[ "$(wc -l < "$work/pkgvers")" -eq "$(wc -l < "$work/pkgs")" ] || die "could not resolve every package version"
if grep -q '=(none)$' "$work/pkgvers"; then die "no candidate for: $(grep '=(none)$' "$work/pkgvers" | tr '\n' ' ')"; fi

# --- downloads (shared pool, named like apt-get download names them) ----------------------
deb_path() { # pkg=ver -> path of the cached .deb (glob over the architecture)
    local pkg=${1%%=*} ver=${1#*=} f
    ver=${ver//:/%3a}
    for f in "$cache/debs/${pkg}_${ver}_"*.deb; do [ -f "$f" ] && { echo "$f"; return 0; }; done
    return 1
}
fetch() { # pkg=ver ...
    local missing=() p
    for p in "$@"; do deb_path "$p" >/dev/null || missing+=("$p"); done
    [ ${#missing[@]} -gt 0 ] || return 0
    log "downloading ${#missing[@]} packages..."
    local dl; dl=$(mktemp -d "$work/dl.XXXXXX"); chmod 755 "$dl"
    if ! (cd "$dl" && apt-get download -q=2 "${missing[@]}") > "$work/apt.log" 2>&1; then
        cat "$work/apt.log" >&2; die "apt-get download failed (stale apt lists? run apt-get update)"
    fi
    mv "$dl"/*.deb "$cache/debs/"
    for p in "${missing[@]}"; do deb_path "$p" >/dev/null || die "downloaded but not found: $p"; done
}

# --- stage 1: kernel + modules -------------------------------------------------------------
# SBX_KERNEL=build (default): vmlinux compiled from Debian's linux-source-X.Y of the same
# version as the cloud kernel package, configured as that package's config with every module
# dropped plus guest/image/kernel.config (the VM's drivers built in, boot-time extras off):
# no module is loaded at boot, and the TCG boot to the agent's hello is ~30 % shorter
# (docs/guest-image.md). Compiling takes 15-30 min on 2 cores, once per input hash.
# SBX_KERNEL=debian: the cloud package's own kernel, with these modules in the initramfs
# (and their dependencies, in modprobe order): virtio-mmio transport, block, console/serial
# ports, rng, erofs for the root, virtio-net, virtio-balloon (free page reporting; sbx-init
# loads it only when the device exists).
kmode=${SBX_KERNEL:-build}
case $kmode in build|debian) ;; *) die "SBX_KERNEL must be build or debian, not $kmode" ;; esac
modules=(virtio_mmio virtio_blk virtio_console virtio_rng erofs virtio_net virtio_balloon)
# crc32c-intel comes in as libcrc32c's softdep; under TCG (no SSE4.2) it fails with ENODEV
# after ~40 ms, and the generic crc32c is built in.
modules_skip=" crc32c-intel.ko crc32c_intel.ko "
kseries=$(echo "$krel" | cut -d. -f1-2)   # 6.1.0-56-cloud-amd64 -> 6.1
spkg=linux-source-$kseries
# The compiled kernel's key leaves out the common part (usage text, tool checks): editing
# that must not cost a 15-minute rebuild; everything the build reads is in section 1.
if [ "$kmode" = build ]; then
    kkey=$( { section 1; echo "$kmode $kpkg=$kver $spkg=$kver"; cat "$here/kernel.config"; } | hash_stdin)
else
    kkey=$( { section 0; section 1; echo "$kmode $kpkg=$kver"; echo "${modules[*]}"; } | hash_stdin)
fi
kdir=$cache/kernel/$kkey

# Kernel build for SBX_KERNEL=build: $1 = extracted cloud package root, $2 = output dir.
build_kernel() {
    local kroot=$1 kout=$2 src cfg line sym n=0 tool
    for tool in make gcc bison flex bc; do
        command -v "$tool" >/dev/null || die "$tool not found (run ci/deps.sh)"
    done
    fetch "$spkg=$kver"
    log "unpacking $spkg ($kver)..."
    dpkg-deb -x "$(deb_path "$spkg=$kver")" "$kt/srcpkg"
    tar -xJf "$kt/srcpkg/usr/src/$spkg.tar.xz" -C "$kt"
    rm -rf "$kt/srcpkg"
    src=$kt/$spkg
    cfg=$src/.config
    sed -E 's/^(CONFIG_[A-Za-z0-9_]+)=m$/# \1 is not set/' "$kroot/boot/config-$krel" > "$cfg"
    (cd "$src" && scripts/kconfig/merge_config.sh -m .config "$here/kernel.config" >/dev/null \
        && make -s olddefconfig >/dev/null) || die "kernel configuration failed"
    while read -r line; do
        case $line in
            CONFIG_*=*) grep -qxF "$line" "$cfg" || die "kernel config: $line does not hold" ;;
            "# CONFIG_"*" is not set")
                sym=${line#\# }; sym=${sym%% *}
                ! grep -q "^$sym=" "$cfg" || die "kernel config: $sym is still set" ;;
        esac
    done < "$here/kernel.config"
    log "compiling the kernel ($(grep -c '=y$' "$cfg") options built in; 15-30 min on 2 cores, cached afterwards)..."
    # Progress: one line per 250 files compiled.
    if ! (cd "$src" && KBUILD_BUILD_TIMESTAMP=@0 KBUILD_BUILD_USER=sbx KBUILD_BUILD_HOST=sbx \
            make -j"$(nproc)" vmlinux 2>"$kt/kbuild.err") | while read -r line; do
        case $line in "CC "*) n=$((n + 1)); [ $((n % 250)) -ne 0 ] || log "kernel: $n files compiled" ;; esac
    done || [ ! -f "$src/vmlinux" ]; then
        tail -n 30 "$kt/kbuild.err" >&2; die "kernel build failed"
    fi
    strip -o "$kout/vmlinux" "$src/vmlinux"
    rm -rf "$src"
}

if [ ! -f "$kdir/vmlinux" ]; then
    t=$(now)
    fetch "$kpkg=$kver"
    kt=$(mktemp -d "$work/kernel.XXXXXX")
    mkdir "$kt/out" "$kt/out/modules"
    dpkg-deb -x "$(deb_path "$kpkg=$kver")" "$kt/root"
    : > "$kt/out/modules.list"
    if [ "$kmode" = build ]; then
        build_kernel "$kt/root" "$kt/out"
        echo "$krel (built from $spkg $kver, guest/image/kernel.config)" > "$kt/out/kernel_version"
    else
        log "extracting kernel $krel ($kver)..."
        depmod -b "$kt/root" "$krel"
        # The bzImage is LZ4 (CONFIG_KERNEL_LZ4): find the LZ4 legacy frame magic 02 21 4c 18,
        # decompress from there, keep the first candidate that is an ELF (the PVH vmlinux).
        vmlinuz=$kt/root/boot/vmlinuz-$krel
        found=0
        for pos in $(grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | cut -d: -f1); do
            tail -c +$((pos + 1)) "$vmlinuz" | lz4 -dc 2>/dev/null > "$kt/vmlinux.raw" || true
            if readelf -h "$kt/vmlinux.raw" >/dev/null 2>&1; then found=1; break; fi
        done
        [ "$found" = 1 ] || die "no LZ4-compressed ELF found in $vmlinuz"
        strip -o "$kt/out/vmlinux" "$kt/vmlinux.raw"
        # modules.list: one absolute initramfs path per line, dependency order, no duplicates.
        for m in "${modules[@]}"; do
            modprobe -d "$kt/root" -S "$krel" --show-depends "$m" > "$kt/deps" || die "module $m not in $krel"
            while read -r kw path _; do
                [ "$kw" = insmod ] || continue
                b=$(basename "$path")
                [ -f "$kt/out/modules/$b" ] && continue
                case $modules_skip in *" $b "*) continue ;; esac
                # objcopy drops the appended signature: the guest has no keys to check it
                # (load_system_certificate_list is blacklisted), and unsigned modules skip the
                # SHA-512 over the module and the failing key search on every load.
                objcopy "$path" "$kt/out/modules/$b"
                echo "/lib/modules/$b" >> "$kt/out/modules.list"
            done < "$kt/deps"
        done
        echo "$krel" > "$kt/out/kernel_version"
    fi
    readelf -n "$kt/out/vmlinux" | grep -q 'Xen.*0x00000012' || die "vmlinux has no PVH entry note"
    mv -T "$kt/out" "$kdir"
    rm -rf "$kt"
    log "kernel ready in $(elapsed "$t") s ($(wc -l < "$kdir/modules.list") modules)"
fi

# --- stage 2: the unpacked root tree -------------------------------------------------------
tkey=$( { section 0; section 2; cat "$here/packages.list" "$work/pkgvers"; } | hash_stdin)
tdir=$cache/tree/$tkey
if [ ! -f "$tdir/packages" ]; then
    t=$(now)
    mapfile -t pv < "$work/pkgvers"
    fetch "${pv[@]}"
    log "unpacking ${#pv[@]} packages..."
    tt=$(mktemp -d "$work/tree.XXXXXX")
    root=$tt/out/root
    mkdir -p "$root"
    for p in "${pv[@]}"; do dpkg-deb -x "$(deb_path "$p")" "$root"; done
    # dash's postinst would make /bin/sh; busybox applets fill in what the others lack.
    [ -e "$root/bin/sh" ] || ln -s dash "$root/bin/sh"
    for applet in $("$root/bin/busybox" --list-full); do
        name=${applet##*/}
        [ -e "$root/bin/$name" ] || [ -e "$root/usr/bin/$name" ] || [ -e "$root/sbin/$name" ] \
            || [ -e "$root/usr/sbin/$name" ] || [ "$name" = init ] || [ "$name" = linuxrc ] \
            || { mkdir -p "$root/${applet%/*}"; ln -s /bin/busybox "$root/$applet"; }
    done
    # What update-ca-certificates would write (every certificate ca-certificates ships).
    mkdir -p "$root/etc/ssl/certs"
    find "$root/usr/share/ca-certificates" -name '*.crt' | sort | xargs cat > "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/lintian \
           "$root"/usr/share/locale "$root"/usr/share/bug "$root"/usr/include "$root"/usr/share/bash-completion
    # Precompile the standard library. unchecked-hash pycs are used without stat()ing the
    # sources: right for a read-only image, and cheap under TCG.
    pydir=$(cd "$root/usr/lib" && ls -d python3.[0-9]* | sort -V | tail -n1)
    log "compiling $pydir bytecode..."
    chroot_bin=$(PATH=$PATH:/usr/sbin:/sbin command -v chroot || true)
    if [ "$(id -u)" = 0 ] && [ -n "$chroot_bin" ]; then
        mkdir -p "$root/dev"
        env -i PATH=/usr/bin:/bin "$chroot_bin" "$root" /usr/bin/python3 -m compileall -q \
            --invalidation-mode unchecked-hash "/usr/lib/$pydir" /usr/lib/python3/dist-packages >/dev/null 2>&1 || true
    elif [ "$(python3 -c 'import sys; print("python%d.%d" % sys.version_info[:2])')" = "$pydir" ]; then
        env -i PATH=/usr/bin:/bin python3 -m compileall -q -s "$root" -p / \
            --invalidation-mode unchecked-hash "$root/usr/lib/$pydir" >/dev/null 2>&1 || true
    else
        log "warning: not root and host python is not $pydir: no precompiled bytecode"
    fi
    npyc=$(find "$root/usr/lib/$pydir" -name '*.pyc' | wc -l)
    [ "$npyc" -gt 500 ] || log "warning: only $npyc .pyc files"
    cp "$work/pkgvers" "$tt/out/packages"
    mv -T "$tt/out" "$tdir"
    rm -rf "$tt"
    log "root tree ready in $(elapsed "$t") s ($(du -sm "$tdir/root" | cut -f1) MB, $npyc .pyc)"
fi

# --- stage 3: the image files ----------------------------------------------------------------
cmdline="console=ttyS0 panic=-1 quiet cryptomgr.notests nokaslr mitigations=off init_on_alloc=0 audit=0"
cmdline+=" lsm=capability,yama,landlock no_timer_check tsc=reliable random.trust_cpu=on pci=off"
# initcalls the sandbox never needs, ~0.3 s under TCG in total (feasibility report §3.3
# plus initcall_debug on this image: cubic 44 ms -> TCP uses reno, no framebuffer, no VGA,
# no T10 DIF, no IMA).
cmdline+=" initcall_blacklist=init_kprobe_trace,crypto_kdf108_init,load_system_certificate_list,inet6_init,init_encrypted,blake2s_mod_init,init_blk_tracer,snapshot_device_init"
cmdline+=",cubictcp_register,fbmem_init,vga_arb_device_init,crc_t10dif_mod_init,init_ima"
seed_mb=${SBX_WORK_SEED_MB:-64}
init_sha=$(sha256sum < "$init_bin" | cut -d' ' -f1)
agent_sha=none
[ -z "$agent_bin" ] || agent_sha=$(sha256sum < "$agent_bin" | cut -d' ' -f1)
ikey=$( { section 0; section 3; echo "$kkey $tkey"; echo "init $init_sha"; echo "agent $agent_sha";
          echo "$cmdline"; echo "seed $seed_mb"; } | hash_stdin)
idir=$cache/image/$ikey
files=(vmlinux initramfs.cpio rootfs.erofs work-seed.ext4 cmdline)

verify() { # dir: every file matches manifest.json
    python3 - "$1" <<'EOF'
import hashlib, json, os, sys
d = sys.argv[1]
m = json.load(open(os.path.join(d, "manifest.json")))
for name, info in m["files"].items():
    p = os.path.join(d, name)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if os.path.getsize(p) != info["size"] or h.hexdigest() != info["sha256"]:
        sys.exit("%s: does not match manifest.json" % name)
EOF
}

# The agent lives in the initramfs (RAM: its exec reads nothing from disk, which costs
# ~150 ms per cold binary under TCG), as /agent/sbx-agent, which init bind-mounts
# read-only at $agent_dir. An agent whose ELF interpreter is in $agent_dir
# (sbx-agent-guest) gets that loader and its libraries from the root tree next to it; as
# it carries GLib inside, the libraries' own GLib dependencies are dropped (patchelf), so
# that their GLib references bind to the agent's copy, and every symbol they need is
# checked to be defined. Any other agent (a plain dynamic build) loads its libraries from
# the root, which must have them.
agent_dir=/usr/libexec/sbx
tree_file() { # name: its path in the root tree (symlinks resolved inside the tree)
    local d p t n
    for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib64 lib usr/lib; do
        p=$tdir/root/$d/$1
        [ -e "$p" ] || [ -L "$p" ] || continue
        for n in 1 2 3 4 5 6 7 8; do
            [ -L "$p" ] || break
            t=$(readlink "$p")
            case $t in /*) p=$tdir/root$t ;; *) p=$(dirname "$p")/$t ;; esac
        done
        [ -f "$p" ] && { echo "$p"; return 0; }
    done
    return 1
}
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
install_agent() { # dir
    local dir=$1 interp lib dep src queue glib_inside=
    mkdir -p "$dir"
    cp "$agent_bin" "$dir/sbx-agent"
    chmod 0755 "$dir/sbx-agent"
    interp=$(readelf -l "$agent_bin" | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p')
    if [ "${interp%/*}" != "$agent_dir" ]; then
        for lib in $(needed "$agent_bin"); do
            tree_file "$lib" >/dev/null || die "agent needs $lib, which no package in packages.list provides"
        done
        return 0
    fi
    src=$(tree_file "${interp##*/}") || die "no loader ${interp##*/} in the root"
    cp "$src" "$dir/${interp##*/}"
    case " $(needed "$agent_bin" | tr '\n' ' ') " in *" libglib-2.0.so.0 "*) ;; *) glib_inside=1 ;; esac
    queue=$(needed "$agent_bin")
    while [ -n "$queue" ]; do
        set -- $queue; lib=$1; shift; queue="$*"
        [ -e "$dir/$lib" ] && continue
        src=$(tree_file "$lib") || die "agent needs $lib, which no package in packages.list provides"
        cp "$src" "$dir/$lib"
        chmod 0755 "$dir/$lib"
        for dep in $(needed "$dir/$lib"); do
            case $glib_inside:$dep in
                1:libglib-2.0.so.0|1:libgobject-2.0.so.0|1:libgio-2.0.so.0|1:libgmodule-2.0.so.0)
                    patchelf --remove-needed "$dep" "$dir/$lib" ;;
                *) queue="$queue $dep" ;;
            esac
        done
    done
    # Every undefined (non-weak) dynamic symbol of each file is defined by one of them.
    python3 - "$dir" <<'EOF' || die "the agent's libraries do not resolve"
import os, re, subprocess, sys
d = sys.argv[1]
defined, wanted = set(), {}
for name in sorted(os.listdir(d)):
    out = subprocess.run(["readelf", "--dyn-syms", "--wide", os.path.join(d, name)],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) < 8 or not re.match(r"\d+:$", f[0]):
            continue
        sym = f[7].split("@")[0]
        if f[6] == "UND":
            if f[4] != "WEAK" and sym:
                wanted.setdefault(sym, name)
        elif f[4] in ("GLOBAL", "WEAK", "UNIQUE"):
            defined.add(sym)
missing = sorted(s for s in wanted if s not in defined)
if missing:
    sys.exit("agent files: undefined symbols: " + ", ".join(
        "%s (%s)" % (s, wanted[s]) for s in missing[:20]))
EOF
}

if [ -f "$idir/manifest.json" ] && verify "$idir"; then
    log "up to date: $ikey (cache hit, verified)"
    touch "$idir"
else
    [ ! -e "$idir" ] || { log "cache entry $ikey is damaged: rebuilding"; rm -rf "$idir"; }
    t_img=$(now)
    it=$(mktemp -d "$work/image.XXXXXX")
    out=$it/out
    mkdir "$out"
    ln "$kdir/vmlinux" "$out/vmlinux" 2>/dev/null || cp "$kdir/vmlinux" "$out/vmlinux"

    log "packing initramfs..."
    ird=$it/initramfs
    mkdir -p "$ird"/{proc,sys,dev,etc,newroot,lib/modules}
    cp "$init_bin" "$ird/init"
    chmod 0755 "$ird/init"
    find "$kdir/modules" -name '*.ko' -exec cp -t "$ird/lib/modules/" {} +
    cp "$kdir/modules.list" "$ird/etc/modules.list"
    if [ -n "$agent_bin" ]; then
        install_agent "$ird/agent"
    fi
    (cd "$ird" && find . -mindepth 1 | sort | cpio -o -H newc --quiet --owner=0:0 --reproducible) > "$out/initramfs.cpio"

    log "packing rootfs (erofs lz4)..."
    rs=$it/rootfs
    cp -al "$tdir/root" "$rs"          # hard links: only new files are added below, none modified
    mkdir -p "$rs"/{proc,sys,dev,tmp,run,home/user,root,etc,usr/libexec,usr/local/bin}
    chmod 1777 "$rs/tmp"; chmod 0700 "$rs/root"
    rm -f "$rs"/etc/{passwd,group,shadow,hosts,hostname,nsswitch.conf,resolv.conf}
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'user:x:1000:1000:sandbox user:/home/user:/bin/sh' \
        'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' > "$rs/etc/passwd"
    printf '%s\n' 'root:x:0:' 'tty:x:5:' 'user:x:1000:' 'nogroup:x:65534:' > "$rs/etc/group"
    printf '%s\n' 'root:*:19000:0:99999:7:::' 'user:*:19000:0:99999:7:::' 'nobody:*:19000:0:99999:7:::' > "$rs/etc/shadow"
    chmod 0640 "$rs/etc/shadow"
    printf '%s\n' '127.0.0.1 localhost sandbox' '::1 localhost ip6-localhost ip6-loopback' > "$rs/etc/hosts"
    echo sandbox > "$rs/etc/hostname"
    printf '%s\n' 'passwd: files' 'group: files' 'shadow: files' 'hosts: files dns' > "$rs/etc/nsswitch.conf"
    ln -s ../run/resolv.conf "$rs/etc/resolv.conf"   # the agent writes /run/resolv.conf when networking
    mkdir -p "$rs$agent_dir"          # where init bind-mounts the initramfs' /agent
    mkfs.erofs --quiet --all-root -zlz4 -T0 "$out/rootfs.erofs" "$rs"
    rm -rf "$rs"

    log "making work-seed.ext4 (${seed_mb} MiB, sparse)..."
    mkdir -m 0755 "$it/home"
    truncate -s "${seed_mb}M" "$out/work-seed.ext4"
    mkfs.ext4 -q -F -O ^has_journal -m 0 -L sbx-work -E root_owner=1000:1000 -d "$it/home" "$out/work-seed.ext4"
    debugfs -w -R 'rmdir lost+found' "$out/work-seed.ext4" >/dev/null 2>&1
    echo "$cmdline" > "$out/cmdline"

    build_seconds=$(elapsed "$t_start")
    python3 - "$out" "$ikey" "$(cat "$kdir/kernel_version")" "$build_seconds" "$agent_sha" "${files[@]}" <<'EOF'
import hashlib, json, os, sys
out, key, kver, secs, agent = sys.argv[1:6]
files = {}
for name in sys.argv[6:]:
    p = os.path.join(out, name)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    files[name] = {"size": os.path.getsize(p), "sha256": h.hexdigest()}
m = {"format": 1, "input_hash": key, "kernel_version": kver, "files": files,
     "build_seconds": float(secs), "agent_sha256": None if agent == "none" else agent}
with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(m, f, indent=2, sort_keys=True)
    f.write("\n")
EOF
    cp "$tdir/packages" "$out/packages.txt"
    chmod a-w "$out"/*
    mv -T "$out" "$idir"
    log "image built in $(elapsed "$t_img") s"
fi

# Point the output link at the entry (atomically), and record the link: several build
# directories share the cache and an image that any link still points at is never dropped.
mkdir -p "$(dirname "$out_link")" "$cache/links"
ln -sfn "$idir" "$out_link.tmp.$$"
mv -T "$out_link.tmp.$$" "$out_link"
abs_link=$(cd "$(dirname "$out_link")" && pwd)/$(basename "$out_link")
printf '%s\n' "$abs_link" > "$cache/links/$(printf '%s' "$abs_link" | hash_stdin)"

# Drop old entries: images no recorded link points at, beyond the newest $SBX_IMAGE_KEEP
# (default 3); trees and kernels beyond the newest 2 (images do not need them to boot).
declare -A used=()
for rec in "$cache"/links/*; do
    [ -f "$rec" ] || continue
    target=$(readlink "$(cat "$rec")" 2>/dev/null) || target=
    case $target in
        "$cache/image/"*) used[${target##*/}]=1 ;;
        *) rm -f "$rec" ;;       # the link is gone or points elsewhere now
    esac
done
gc() { # dir keep
    local n=0 e
    for e in $(ls -1t "$1"); do
        n=$((n + 1))
        [ $n -le "$2" ] || [ -n "${used[$e]:-}" ] || rm -rf "${1:?}/$e"
    done
}
touch "$kdir" "$tdir"
gc "$cache/image" "${SBX_IMAGE_KEEP:-3}"
gc "$cache/tree" 2
gc "$cache/kernel" 2
# Packages: the current versions stay; others (superseded by updates) go after 14 days.
while read -r p; do f=$(deb_path "$p") && touch "$f"; done < <(cat "$work/pkgvers"; echo "$kpkg=$kver")
find "$cache/debs" -name '*.deb' -mtime +14 -delete

log "kernel $krel ($kver), nodejs $node_ver, agent: ${agent_bin:-none (init will report it missing)}"
for f in "${files[@]}"; do
    printf '[guest-image]   %-15s %8.1f MB (%s MB allocated)\n' "$f" \
        "$(awk -v s="$(stat -c %s "$idir/$f")" 'BEGIN { print s / 1e6 }')" \
        "$(du -m "$idir/$f" | cut -f1)"
done
log "$out_link -> $idir ($(elapsed "$t_start") s)"
