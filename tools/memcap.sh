#!/bin/sh
# A txt2img run in a memory cgroup beside the same run without one (issue 20's target: 512x512
# SD 1.5 with the exact decode in 192 MB, 1024x1024 in 640 MB, at most 1.5x the time).
#   tools/memcap.sh MODEL SIZE STEPS CAP_MB [THREADS [FLAG...]]   (MB = 10^6 bytes; THREADS 0 = all
#   cores; FLAGs go to both runs of ./example, e.g. --read-weights)
# Each run starts from a dropped page cache, so that the weights are read from the disk and the
# capped run's pages are charged to its cgroup. Prints one line: the cap, the arena, each run's
# seconds, CPU seconds (user + system: on a machine with other work the wall times vary more), peak
# RSS and bytes read from the disk (/usr/bin/time -v: RSS counts the arena's pages
# and the resident pages of the mmap'd weights, whose clean pages the kernel drops under the cap
# and reads again when they are next used, once per UNet evaluation if a layer's weights stay
# while it runs), the cgroup's own peak (v1 memory.max_usage_in_bytes, v2 memory.peak: with the
# page cache it charged), and whether the two PNGs are the same bytes. Needs root and a writable cgroup (v2 memory.max or v1
# memory.limit_in_bytes): where there is none it prints a note and exits 0.
set -u
[ $# -ge 4 ] || { echo "usage: $0 MODEL SIZE STEPS CAP_MB [THREADS [FLAG...]]" >&2; exit 2; }
model=$1 size=$2 steps=$3 cap_mb=$4 threads=${5:-0}
shift 4; [ $# -gt 0 ] && shift
flags="$*"
top=$(cd "$(dirname "$0")/.." && pwd)
example=$top/example
cap=$((cap_mb * 1000000))
tag="memcap size=$size steps=$steps cap_mb=$cap_mb${flags:+ flags=$(echo $flags | tr ' ' ,)}"
tflag=; [ "$threads" = 0 ] || tflag="-t $threads"   # (./example's default: all cores)

skip() { echo "note: $tag: $1; the capped run is skipped"; exit 0; }
[ -x "$example" ] || { echo "$tag: build ./example first (make example)" >&2; exit 2; }
[ -f "$model" ] || { echo "$tag: no model at $model" >&2; exit 2; }
[ "$(id -u)" = 0 ] || skip "not root (cgroups and drop_caches need it)"
[ -x /usr/bin/time ] || skip "no /usr/bin/time for the peak RSS"
[ -w /proc/sys/vm/drop_caches ] || skip "/proc/sys/vm/drop_caches is not writable"

# a cgroup of our own: v2 if the unified hierarchy has the memory controller, else v1's
name=sdh-memcap-$$
if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
    cg=/sys/fs/cgroup/$name
    mkdir "$cg" 2>/dev/null && echo "$cap" > "$cg/memory.max" 2>/dev/null || { rmdir "$cg" 2>/dev/null; skip "cannot make a cgroup v2 with memory.max"; }
    [ -f "$cg/memory.swap.max" ] && echo 0 > "$cg/memory.swap.max"
    peak_file=$cg/memory.peak
elif [ -d /sys/fs/cgroup/memory ]; then
    cg=/sys/fs/cgroup/memory/$name
    mkdir "$cg" 2>/dev/null && echo "$cap" > "$cg/memory.limit_in_bytes" 2>/dev/null || { rmdir "$cg" 2>/dev/null; skip "cannot make a cgroup v1 with memory.limit_in_bytes"; }
    [ -f "$cg/memory.memsw.limit_in_bytes" ] && echo "$cap" > "$cg/memory.memsw.limit_in_bytes"
    peak_file=$cg/memory.max_usage_in_bytes
else
    skip "no memory cgroup (neither v2 memory.max nor v1 memory.limit_in_bytes)"
fi
tmp=$(mktemp -d)
trap 'rmdir "$cg" 2>/dev/null; rm -rf "$tmp"' EXIT

# one run: $1 = label, $2 = cgroup or "", then the time (s), peak RSS (kB) and status in $tmp/$1.*
run() {
    sync && echo 3 > /proc/sys/vm/drop_caches
    start=$(date +%s.%N)
    sh -c '[ -z "$1" ] || echo $$ > "$1/cgroup.procs" || exit 125; shift; exec "$@"' sh "$2" \
        /usr/bin/time -v -o "$tmp/$1.time" "$example" -m "$model" -p "a lighthouse on a cliff at dusk" \
        -W "$size" -H "$size" --steps "$steps" -s 42 $tflag $flags -o "$tmp/$1.png" > "$tmp/$1.log" 2>&1
    echo $? > "$tmp/$1.status"
    echo "$start $(date +%s.%N)" | awk '{ printf "%.1f", $2 - $1 }' > "$tmp/$1.seconds"
    awk -F': ' '/Maximum resident set size/ { print $2 }' "$tmp/$1.time" > "$tmp/$1.rss" 2>/dev/null
    awk -F': ' '/File system inputs/ { printf "%.0f", $2 * 512 / 1e6 }' "$tmp/$1.time" > "$tmp/$1.read" 2>/dev/null
    awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.1f", s }' "$tmp/$1.time" > "$tmp/$1.cpu" 2>/dev/null
}
run free ""
run capped "$cg"

mb() { awk -v k="$1" 'BEGIN { if (k == "") print "?"; else printf "%.1f", k * 1024 / 1e6 }'; }
arena=$(sed -n 's/.*arena \([0-9.]*\) MiB.*/\1/p' "$tmp/free.log" | head -1)
cg_peak=$(cat "$peak_file" 2>/dev/null | awk '{ printf "%.1f", $1 / 1e6 }')
if [ "$(cat "$tmp/capped.status")" = 0 ] && [ "$(cat "$tmp/free.status")" = 0 ]; then
    same=no; cmp -s "$tmp/free.png" "$tmp/capped.png" && same=yes
    ratio=$(awk -v a="$(cat "$tmp/capped.seconds")" -v b="$(cat "$tmp/free.seconds")" 'BEGIN { printf "%.2f", a / b }')
    echo "$tag threads=$threads arena_mib=$arena seconds=$(cat "$tmp/free.seconds") cpu_seconds=$(cat "$tmp/free.cpu")" \
         "peak_rss_mb=$(mb "$(cat "$tmp/free.rss")") read_mb=$(cat "$tmp/free.read") capped_seconds=$(cat "$tmp/capped.seconds")" \
         "capped_cpu_seconds=$(cat "$tmp/capped.cpu") capped_peak_rss_mb=$(mb "$(cat "$tmp/capped.rss")") capped_read_mb=$(cat "$tmp/capped.read")" \
         "cgroup_peak_mb=$cg_peak time_ratio=$ratio identical=$same"
    [ $same = yes ]
else
    echo "$tag threads=$threads FAILED: unconstrained exit $(cat "$tmp/free.status"), capped exit $(cat "$tmp/capped.status")" \
         "(137: killed, as by the OOM killer); cgroup_peak_mb=$cg_peak"
    tail -3 "$tmp/capped.log"
    exit 1
fi
