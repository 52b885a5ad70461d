#!/usr/bin/env bash
# ansible-test sanity against a copy of this checkout placed under a temporary
# ansible_collections/safedeploy/compose/ (ansible-test insists on that path).
# Usage: tests/sanity/sanity.sh [extra ansible-test sanity options]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${VENV:-$root/.venv}
python_version=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

pip_version=$("$venv/bin/python" - "$python_version" <<'PY'
import sys
from ansible_test._internal.python_requirements import get_venv_packages
class Python:  # the one attribute get_venv_packages reads
    version = sys.argv[1]
print(get_venv_packages(Python)['pip'])
PY
)
install -D -m 0644 "$root/tests/sanity/get_pip_standin.py" "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"

work=$(mktemp -d "${TMPDIR:-/tmp}/safedeploy-sanity.XXXXXX")
trap 'rm -rf "$work"' EXIT
dest=$work/ansible_collections/safedeploy/compose
mkdir -p "$dest"
# Tracked and new (not ignored) files only: no venv, caches or test output.
(cd "$root" && git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | xargs -0 cp --parents -t "$dest")
cd "$dest"
"$venv/bin/ansible-test" sanity --venv --python "$python_version" --color no "$@"
