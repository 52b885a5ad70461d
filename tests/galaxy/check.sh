#!/usr/bin/env bash
# Build the collection tarball the way a release does, check that it carries nothing but the collection,
# and run Galaxy's importer on it (the check Galaxy runs before it accepts an upload).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=tests/output/galaxy
rm -rf "$out" && mkdir -p "$out"
.venv/bin/ansible-galaxy collection build --force --output-path "$out" . > /dev/null
tarball=$(ls "$out"/safedeploy-compose-*.tar.gz)
echo "built $tarball ($(du -h "$tarball" | cut -f1))"
# no build output, virtualenvs, caches, test output or benchmark results may ship
listing=$(tar tzf "$tarball")
stray=$(echo "$listing" | grep -E '(^|/)(\.venv|\.build|\.cache|\.ansible|\.pytest_cache|__pycache__|\.molecule)(/|$)|^tests/output/|^bench/results/|\.pyc$|\.tar\.gz$' || true)
if [ -n "$stray" ]; then
  echo "the tarball holds files that must not ship:" >&2
  echo "$stray" | head -20 >&2
  exit 1
fi
# (from inside $out: the importer leaves importer_result.json in its working directory)
(cd "$out" && PATH="$OLDPWD/.venv/bin:$PATH" GALAXY_IMPORTER_CONFIG="$OLDPWD/tests/galaxy/galaxy-importer.cfg" \
  "$OLDPWD/.venv/bin/python" -m galaxy_importer.main "$(basename "$tarball")" > importer.log 2>&1) || {
    tail -40 "$out/importer.log" >&2
    echo "galaxy-importer rejected the collection (whole log: $out/importer.log)" >&2
    exit 1
  }
# the importer reports lint findings as warnings and still exits 0: a warning fails here too
if grep -E '^(WARNING|ERROR)' "$out/importer.log" > "$out/warnings.log"; then
  cat "$out/warnings.log" >&2
  echo "galaxy-importer warned about the collection (whole log: $out/importer.log)" >&2
  exit 1
fi
echo "galaxy-importer accepted $tarball"
# A user without a checkout: install the tarball, copy the example inventory out of it, and run the playbooks
# by their FQCN (syntax check: the example hosts do not exist here).
installed="$PWD/$out/installed"
ANSIBLE_COLLECTIONS_PATH="$installed" .venv/bin/ansible-galaxy collection install --force -p "$installed" "$tarball" > /dev/null
printf '[defaults]\n' > "$out/ansible.cfg"  # nothing of this checkout's ansible.cfg
cp -r "$installed/ansible_collections/safedeploy/compose/inventories/example" "$out/my-inventory"
for playbook in rollout rollback recover disk_guard status promote; do
  ANSIBLE_COLLECTIONS_PATH="$installed" ANSIBLE_CONFIG="$PWD/$out/ansible.cfg" \
    .venv/bin/ansible-playbook "safedeploy.compose.$playbook" -i "$out/my-inventory/hosts.yml" --syntax-check \
    -e release=9f2c1ab > "$out/syntax-$playbook.log" 2>&1 || {
      cat "$out/syntax-$playbook.log" >&2
      echo "ansible-playbook safedeploy.compose.$playbook does not run from the installed collection" >&2
      exit 1
    }
done
echo "the installed collection runs its playbooks by FQCN with a copy of its example inventory"
