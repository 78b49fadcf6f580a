#!/usr/bin/env bash
# Build dist/db-toolkit-backend/ (dbtkd + dbtkctl sharing one _internal/) from this checkout.
#
#   ./build-backend.sh            # build; prints the bundle's size and the time it took
#
# Everything it needs goes into its own virtual environment, build/venv, installed from the
# pinned build-requirements.txt (recreated when that file or the Python version changes). It
# never uses the project's .venv, nor an installed copy of dbtkd: backend.spec analyses the
# source tree. Fails if a runtime dependency of pyproject.toml is not pinned, if the bundle does
# not run, or if it is over the size budget (DBTK_BUNDLE_BUDGET_MIB, default 35).
#
# Environment: PYTHON (the interpreter to build with: 3.11+, built with a shared libpython;
# default python3), DBTK_BUNDLE_BUDGET_MIB. macOS and Windows: see docs/building.md.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=build/venv
STAMP="$VENV/.dbtk-build-requirements"
DIST=dist
NAME=db-toolkit-backend
BUDGET_MIB="${DBTK_BUNDLE_BUDGET_MIB:-35}"
started=$SECONDS

say() { printf 'build-backend: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

case "$(uname -s)" in
    MINGW* | MSYS* | CYGWIN*) VPY="$VENV/Scripts/python.exe" ;;
    *) VPY="$VENV/bin/python" ;;
esac

"$PYTHON" - <<'EOF' || die "need Python 3.11+ built with a shared libpython (set PYTHON=...)"
import sys, sysconfig
ok = sys.version_info >= (3, 11)
if sys.platform.startswith("linux"):
    ok = ok and bool(sysconfig.get_config_var("Py_ENABLE_SHARED"))
sys.exit(0 if ok else 1)
EOF

# Every runtime dependency in pyproject.toml must be pinned here, or the bundle would carry
# whatever version pip picked on the day.
"$PYTHON" - <<'EOF' || die "pin the runtime dependencies above in build-requirements.txt"
import re, sys, tomllib
with open("pyproject.toml", "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
wanted = [re.split(r"[ <>=!~;\[]", d, maxsplit=1)[0] for d in dependencies]
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
pinned = set()
for line in open("build-requirements.txt", encoding="utf-8"):
    m = re.match(r"\s*([A-Za-z0-9_.-]+)==", line)
    if m:
        pinned.add(norm(m.group(1)))
missing = [d for d in wanted if norm(d) not in pinned]
if missing:
    print(f"build-backend: not pinned in build-requirements.txt: {missing}", file=sys.stderr)
    sys.exit(1)
EOF

fingerprint="$("$PYTHON" -c 'import hashlib, sys
digest = hashlib.sha256(open("build-requirements.txt", "rb").read()).hexdigest()
print(sys.version.split()[0], sys.executable, digest)')"
if [[ ! -x "$VPY" || "$(cat "$STAMP" 2>/dev/null)" != "$fingerprint" ]]; then
    say "creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # --no-deps: build-requirements.txt is the whole closure; pip check proves it.
    "$VPY" -m pip install --quiet --disable-pip-version-check --no-deps -r build-requirements.txt
    if ! "$VPY" -m pip check; then
        die "build-requirements.txt is not a complete closure (see above)"
    fi
    printf '%s' "$fingerprint" >"$STAMP"
fi

say "pyinstaller backend.spec"
rm -rf "${DIST:?}/$NAME"
# PYTHONDONTWRITEBYTECODE: the checkout stays clean; PyInstaller compiles into its workpath.
PYTHONDONTWRITEBYTECODE=1 "$VPY" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath build/pyinstaller backend.spec

bundle="$DIST/$NAME"
exe=""
[[ -e "$bundle/dbtkctl.exe" ]] && exe=.exe
"$bundle/dbtkctl$exe" version >/dev/null || die "the built dbtkctl does not run"
DBTK_FROZEN_SELFTEST=1 "$bundle/dbtkd$exe" _selftest >/dev/null || die \
    "the built dbtkd cannot import its app; see DBTK_FROZEN_SELFTEST=1 $bundle/dbtkd _selftest"

# Apparent size (what an installer carries) and blocks on disk; the budget applies to the larger.
read -r bytes disk <<<"$("$PYTHON" - "$bundle" <<'EOF'
import os, sys
apparent = blocks = 0
for folder, _, files in os.walk(sys.argv[1]):
    for name in files:
        st = os.lstat(os.path.join(folder, name))
        apparent += st.st_size
        blocks += getattr(st, "st_blocks", (st.st_size + 511) // 512) * 512
print(apparent, blocks)
EOF
)"
largest=$((bytes > disk ? bytes : disk))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
say "built $bundle in $((SECONDS - started)) s"
echo "bundle size: $(mib "$bytes") MiB ($bytes bytes; $(mib "$disk") MiB on disk) in $bundle" \
    "(budget $BUDGET_MIB MiB)"
awk -v b="$largest" -v m="$BUDGET_MIB" 'BEGIN { exit !(b > m * 1048576) }' \
    && die "the bundle is over its budget of $BUDGET_MIB MiB"
exit 0
