#!/bin/bash
# The shell's own smoke test under Wine 8.0 (not the CI stage: the userlib's Windows tools
# are). Builds smoke.c with mingw-w64, installs rhax.sys (release, or debug with `debug`) as
# a kernel service in a private prefix, runs the client, stops and deletes the service.
# Output: the Wine log (DbgPrint lines are "rhax: ..."), then the number of "Unhandled" /
# "unimplemented function" lines that are not Wine's own HID fixmes.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
profile=${1:-release}
export PATH=$PATH:/usr/lib/wine
export WINEPREFIX=${WINEPREFIX:-/tmp/wine-rhax-smoke}
out=${SMOKE_OUT:-/tmp/rhax-smoke}
mkdir -p "$out"
x86_64-w64-mingw32-gcc -O2 -Wall -o "$out/smoke.exe" "$here/smoke.c" -ladvapi32 || exit 1
[ -d "$WINEPREFIX/drive_c" ] || WINEDEBUG=-all wine64 wineboot -i >/dev/null 2>&1
wineserver -k 2>/dev/null; sleep 1
if [ "$profile" = fake ]; then
  (cd "$root/driver/windows" && cargo build -q --release --features wine-fake-vmx \
     --target x86_64-unknown-uefi --target-dir "$root/target/windows-fake") || exit 1
  image="$root/target/windows-fake/x86_64-unknown-uefi/release/rhax.efi"
else
  image="$root/target/windows/x86_64-unknown-uefi/$profile/rhax.sys"
fi
cp "$image" "$WINEPREFIX/drive_c/windows/system32/drivers/rhax.sys" || exit 1
export WINEDEBUG=warn+debugstr,err+all
wineserver -p
( wine64 sc create rhax type= kernel start= demand binPath= 'C:\windows\system32\drivers\rhax.sys'
  wine64 sc start rhax
  sleep 2
  wine64 "$out/smoke.exe"; echo "smoke exit: $?"
  wine64 sc stop rhax
  sleep 2
  wine64 sc delete rhax
) > "$out/wine.log" 2>&1
wineserver -k
cat "$out/wine.log"
bad=$(grep -i -E "unhandled|unimplemented function" "$out/wine.log" | grep -v ":hid:" | wc -l)
echo "=== Unhandled/unimplemented (outside Wine's HID fixmes): $bad"
grep -q "SMOKE PASSED" "$out/wine.log" && [ "$bad" = 0 ]
