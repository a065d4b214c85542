#!/usr/bin/env bash
# Checks the Prometheus rules, their unit tests and the Grafana dashboard.
# Installs Debian's prometheus package (for promtool) when promtool is missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

RULES=deploy/prometheus/rules.yaml
RULES_TEST=deploy/prometheus/rules_test.yaml
DASHBOARD=dashboards/metal3-fakenode.json

if ! command -v promtool >/dev/null 2>&1; then
  echo "==> promtool not found, installing Debian's prometheus package"
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "promtool is missing and neither root nor sudo is available" >&2
    exit 1
  fi
  # Noninteractive: the package's postinst must not stop to ask questions in CI.
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
echo "==> $(promtool --version 2>&1 | head -n1)"

echo "==> promtool check rules $RULES"
promtool check rules "$RULES"

echo "==> promtool test rules $RULES_TEST"
promtool test rules "$RULES_TEST"

echo "==> $DASHBOARD parses as JSON"
python3 -m json.tool "$DASHBOARD" >/dev/null

echo "==> $DASHBOARD has no hard-coded datasource uid"
# Every "uid" must be the datasource variable, except the dashboard's own uid and the
# built-in Grafana annotation source.
bad_uids=$(grep -nE '"uid": *"' "$DASHBOARD" \
  | grep -vE '"uid": *"\$\{datasource\}"|"uid": *"-- Grafana --"|"uid": *"metal3-fakenode"' || true)
if [ -n "$bad_uids" ]; then
  echo "hard-coded uid(s):" >&2
  echo "$bad_uids" >&2
  exit 1
fi

# grep cannot tell which object a uid belongs to; walk the JSON to make sure every panel
# and query uses the variable and that queries only use $__rate_interval, which is the
# one Grafana variable the integration test substitutes.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$DASHBOARD" "$tmp/dashboard-rules.yaml" <<'EOF'
import json, re, sys

dashboard_path, rules_path = sys.argv[1], sys.argv[2]
with open(dashboard_path) as f:
    dashboard = json.load(f)

want = {"type": "prometheus", "uid": "${datasource}"}
errors, exprs = [], []

variables = dashboard.get("templating", {}).get("list", [])
if not any(v.get("name") == "datasource" and v.get("type") == "datasource"
           and v.get("query") == "prometheus" for v in variables):
    errors.append("no datasource template variable of type datasource/prometheus")

def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))

for panel in walk_panels(dashboard.get("panels", [])):
    where = f"panel {panel.get('id')} {panel.get('title')!r}"
    if panel.get("datasource") != want:
        errors.append(f"{where}: datasource is {panel.get('datasource')!r}")
    for target in panel.get("targets", []):
        if target.get("datasource") != want:
            errors.append(f"{where}: target {target.get('refId')} datasource is "
                          f"{target.get('datasource')!r}")
        expr = target.get("expr", "")
        if not expr:
            errors.append(f"{where}: target {target.get('refId')} has no expr")
            continue
        leftover = re.findall(r"\$\{?\w+", expr.replace("$__rate_interval", ""))
        if leftover:
            errors.append(f"{where}: expr uses Grafana variables {leftover}: {expr}")
        exprs.append(expr.replace("$__rate_interval", "1m"))

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)

# JSON is YAML: promtool parses each query as a recording rule, which is a full PromQL
# syntax and type check without a running Prometheus.
rules = [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
with open(rules_path, "w") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)
print(f"    {len(exprs)} queries use the datasource variable and only $__rate_interval")
EOF

echo "==> dashboard queries are valid PromQL (\$__rate_interval=1m)"
promtool check rules "$tmp/dashboard-rules.yaml"

echo "==> all Prometheus rule and dashboard checks passed"
