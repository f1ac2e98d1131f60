#!/usr/bin/env bash
# Builds silica's container image from the Containerfile with podman, then runs it the way
# SageMaker hosting does (`IMAGE serve`, the model mounted at /opt/ml/model, nothing else on
# the command line) and checks the contract through the container's published port:
# GET /ping 200, POST /invocations (a chat body and a completion body; the completion's greedy
# text equal to transformers' for a models/fixtures checkpoint), a malformed body 400, and
# SIGTERM (`podman stop`) → a clean exit after the drain.
#
# Base images: the Containerfile's defaults come from docker.io. When that registry cannot be
# reached (this project's machines reach only package registries), the script makes them
# itself: a Debian bookworm root file system from debootstrap (Debian's packages), imported
# with `podman import`; the build stage then uses the host's Rust toolchain and cargo registry
# mounted (`podman build -v`), under the same paths and variables as the official
# rust image, so the same Containerfile builds either way.
#
# Usage: scripts/container.sh   (IMAGE=localhost/silica:dev by default; PORT=18080)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/silica:dev}
WORK=target/container
mkdir -p "$WORK"

need() { command -v "$1" >/dev/null || MISSING="${MISSING:-} $2"; }
MISSING=
need podman podman
need debootstrap debootstrap
need curl curl
if [ -n "$MISSING" ]; then
    echo "installing$MISSING (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $MISSING \
        uidmap slirp4netns fuse-overlayfs crun >/dev/null
fi

BUILD_ARGS=()
VOLUMES=()
if timeout 20 podman pull -q docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
    echo "base images: from docker.io"
else
    echo "base images: docker.io unreachable; making them with debootstrap"
    MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    base() { # name, packages, podman import --change arguments...
        local name=$1 pkgs=$2; shift 2
        if podman image exists "localhost/$name"; then return; fi
        local root="$WORK/rootfs-$name"
        rm -rf "$root"
        debootstrap --variant=minbase --include="$pkgs" bookworm "$root" "$MIRROR" \
            >"$WORK/debootstrap-$name.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap-$name.log"; exit 1; }
        # What debian:bookworm-slim leaves out too.
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
            "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
            "$root"/usr/share/locale/*
        tar -C "$root" -c . | podman import "$@" - "localhost/$name" >/dev/null
        rm -rf "$root"
    }
    base silica-runtime-base ca-certificates --change 'CMD ["/bin/bash"]'
    base silica-build-base ca-certificates,gcc,libc6-dev,pkg-config \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV CARGO_NET_OFFLINE=true' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    BUILD_ARGS=(--build-arg RUST_IMAGE=localhost/silica-build-base
                --build-arg RUNTIME_IMAGE=localhost/silica-runtime-base)
    RUSTUP=${RUSTUP_HOME:-$HOME/.rustup}
    CARGO=${CARGO_HOME:-$HOME/.cargo}
    # The workspace's crates, fetched on the host (the build runs offline).
    cargo fetch --locked >/dev/null
    mkdir -p "$WORK/target"
    # cargo locks its registry cache even offline: that mount is writable.
    VOLUMES=(-v "$RUSTUP:/usr/local/rustup:ro" -v "$CARGO:/usr/local/cargo"
             -v "$PWD/$WORK/target:/src/target")
fi

# Some hosts (this project's sandboxes among them: cgroups v1, no CAP_SYS_RESOURCE) cannot run
# podman's default crun with its default rlimits; runc without them works there.
probe=${BUILD_ARGS[3]:-docker.io/library/debian:bookworm-slim}
probe=${probe#RUNTIME_IMAGE=}
if ! podman run --rm "$probe" true >/dev/null 2>"$WORK/probe.err"; then
    echo "podman's default runtime fails here ($(tail -1 "$WORK/probe.err")); using runc, no rlimits"
    command -v runc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y runc >/dev/null
    printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' >"$WORK/containers.conf"
    export CONTAINERS_CONF=$PWD/$WORK/containers.conf
    podman run --rm "$probe" true
fi

echo "building $IMAGE"
t0=$(date +%s)
podman build -f Containerfile -t "$IMAGE" "${BUILD_ARGS[@]}" "${VOLUMES[@]}" . \
    >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s: $(podman image inspect "$IMAGE" --format '{{.Size}}' \
    | awk '{printf "%.1f MB", $1/1e6}')"
user=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
[ "$user" = "10001:10001" ] || { echo "image user is '$user', not the non-root 10001" >&2; exit 1; }

# SageMaker's way: `docker run -p 8080 -v model:/opt/ml/model IMAGE serve`.
FIXTURE=models/fixtures/llama3-tied
PORT=${PORT:-18080}
NAME=silica-container-check-$$
cleanup() { podman rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# Rootful podman in a sandbox without a bridge network falls back to the host's network, with
# SageMaker's port variable moving the listener instead of a published port.
if podman run -d --name "$NAME" -p "127.0.0.1:$PORT:8080" \
        -v "$PWD/$FIXTURE:/opt/ml/model:ro" -e SILICA_MAX_CONTEXT=128 \
        "$IMAGE" serve >/dev/null 2>"$WORK/run.err"; then
    echo "container $NAME: port 8080 published on 127.0.0.1:$PORT"
else
    echo "no bridge network here ($(tail -1 "$WORK/run.err")); using --network host"
    podman rm -f "$NAME" >/dev/null 2>&1 || true
    podman run -d --name "$NAME" --network host -e SAGEMAKER_BIND_TO_PORT="$PORT" \
        -v "$PWD/$FIXTURE:/opt/ml/model:ro" -e SILICA_MAX_CONTEXT=128 \
        "$IMAGE" serve >/dev/null
fi
URL=http://127.0.0.1:$PORT
for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/ping" || true)
    [ "$code" = 200 ] && break
    podman container exists "$NAME" && [ "$(podman inspect -f '{{.State.Running}}' "$NAME")" = true ] \
        || { podman logs "$NAME"; echo "the container exited" >&2; exit 1; }
    sleep 0.2
done
[ "$code" = 200 ] || { podman logs "$NAME"; echo "/ping never answered 200" >&2; exit 1; }
echo "GET /ping: 200"

python3 - "$URL" "$FIXTURE" <<'PY'
import json, sys, urllib.request, urllib.error
url, fixture = sys.argv[1], sys.argv[2]
ref = json.load(open(f"{fixture}/reference.json"))
def post(body):
    req = urllib.request.Request(url + "/invocations", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
st, v = post(json.dumps({"prompt": ref["input_ids"], "max_tokens": len(ref["greedy"]["ids"]),
                         "temperature": 0, "ignore_eos": True}))
assert st == 200, (st, v)
assert v["choices"][0]["text"] == ref["greedy"]["text"], (v, ref["greedy"]["text"])
print("POST /invocations (prompt): 200, greedy text equals transformers'")
st, v = post(json.dumps({"messages": ref["chat"]["messages"], "max_tokens": 3}))
assert st == 200 and v["object"] == "chat.completion", (st, v)
assert v["usage"]["prompt_tokens"] == len(ref["chat"]["ids"]), v
print("POST /invocations (messages): 200, the chat template's prompt tokens")
st, v = post('{"prompt": ')
assert st == 400 and "not valid JSON" in v["error"]["message"], (st, v)
print("POST /invocations (malformed): 400,", v["error"]["message"][:60])
PY

t0=$(date +%s.%N)
podman stop -t 30 "$NAME" >/dev/null
code=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
logs=$(podman logs "$NAME" 2>&1)
echo "$logs" | grep -q '"path":"/invocations"' \
    || { echo "$logs"; echo "no JSON access log lines for /invocations" >&2; exit 1; }
echo "$logs" | grep -q "drained in" || { echo "$logs"; echo "no drain line" >&2; exit 1; }
[ "$code" = 0 ] || { echo "$logs"; echo "exit code $code after SIGTERM" >&2; exit 1; }
printf 'SIGTERM: exit 0 in %s s (%s)\n' "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')" \
    "$(echo "$logs" | grep -o 'drained in [0-9.]* s')"
echo "container check: OK"
