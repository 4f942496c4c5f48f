#!/usr/bin/env bash
# Builds the detmix service image and drives a container of it over 127.0.0.1.
#
#   docker/test_image.sh            # from anywhere; .ci/run calls it
#
# Steps: a Docker engine (../shared/docker/ensure-engine.sh: host networking only), the image
# (docker/Dockerfile, the host CA bundle passed as the pip_ca build secret), then one container
# as it runs in production (read-only root, tmpfs /tmp, no capabilities, memory limit, non-root)
# on a free loopback port, and these checks:
#   image       non-root user, exec-form entrypoint, a HEALTHCHECK, no torch, no compiler, no pip
#   health      /healthz 200 and Docker's own HEALTHCHECK reports "healthy"
#   readyz      /readyz 200 (the embedded dataset is loaded)
#   recipes     GET /v1/recipes lists the packaged recipes
#   mix         POST /v1/mix, multipart: two coco-mini photographs + their COCO JSON -> 200 with
#               two JPEG images and annotations whose image_ids are the returned images'
#   mix-json    POST /v1/mix, JSON with base64 images: the same, as PNG
#   bad-media   a text file sent as an image -> 415
#   bad-coco    an annotation with a negative width -> 422 naming the annotation's field
#   metrics     /metrics counts the mixed images and both rejections by reason
#   shutdown    docker stop (SIGTERM) -> exit code 0 and uvicorn's graceful shutdown lines
# then docker/compose.yaml, with Debian's docker-compose (1.29, apt-get installs it when missing),
# run from the image just built (`DETMIX_IMAGE=<tag> up --no-build`, its own project name, a free
# loopback port, DETMIX_COCO_DIR=the coco-mini above, a 1 s healthcheck interval):
#   compose-config   `docker-compose config` accepts the file
#   compose-up       `up -d --no-build` starts the service
#   compose-ready    /readyz 200 and /v1/datasets lists coco-mini (the bind-mounted dataset)
#   compose-batch    POST /v1/datasets/coco-mini/batch -> 200 with the images drawn from it
#   compose-limits   docker inspect: read-only root, 2 GiB memory, tmpfs /tmp, non-root user
#   compose-fs       docker exec: writing to / fails (read-only), writing to /tmp works
#   compose-health   the compose healthcheck reaches "healthy"
#   compose-stop     `docker-compose stop` (SIGTERM) -> exit code 0, then `down` removes it all
# The last line is `docker: N passed, M failed` (the time taken on the line before); the exit
# status is non-zero on any failure.
# The containers (compose project too), and the scratch folder, go away on every exit (trap); the image stays
# (tag: $DETMIX_IMAGE, default detmix-service:test) so that a second run reuses its layers.
#
# Environment: DETMIX_IMAGE (tag), DETMIX_COCO_MINI (default ../shared/data/coco-mini next to the
# repository), DETMIX_BUILD_CA (CA bundle for the build; default the system bundle when present),
# DETMIX_ENSURE_ENGINE (default ../shared/docker/ensure-engine.sh; without it, a running engine).
# Host networking throughout (`--network host`), so it also runs where dockerd has no bridge.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
started=$SECONDS
image=${DETMIX_IMAGE:-detmix-service:test}
coco_mini=${DETMIX_COCO_MINI:-$repo/../shared/data/coco-mini}
ca=${DETMIX_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}
name=detmix-test-$$-$RANDOM
work=$(mktemp -d "${TMPDIR:-/tmp}/detmix-docker-test.XXXXXX")
passed=0
failed=0
docker=docker

cleanup() {
  local status=$?
  if [ -n "${docker_ready:-}" ]; then
    "$docker" rm -f "$name" >/dev/null 2>&1 || true
  fi
  if [ -n "${compose_up:-}" ]; then
    compose down -t 5 -v --remove-orphans >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '%s\n' "docker: $*" >&2; }
ok() { passed=$((passed + 1)); printf 'ok    %-14s %s\n' "$1" "${2:-}"; }
bad() { failed=$((failed + 1)); printf 'FAIL  %-14s %s\n' "$1" "${2:-}"; }
finish() {
  printf 'docker: image test took %ds\n' "$((SECONDS - started))"
  printf 'docker: %d passed, %d failed\n' "$passed" "$failed"
  if [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]; then exit 0; else exit 1; fi
}
# HTTP: `http METHOD PATH [curl args...]` -> status code on stdout, body in $work/body.
http() {
  local method=$1 path=$2
  shift 2
  curl -sS -o "$work/body" -w '%{http_code}' -X "$method" --max-time 60 "$@" "http://127.0.0.1:$port$path" \
    2>"$work/curl.err" || true
}
body() { head -c "${1:-400}" "$work/body"; echo; }
# until_ok PATH CONTAINER: GET PATH until it answers 200, while CONTAINER runs and $deadline is ahead;
# prints the last status code.
until_ok() {
  local code=000
  while [ $SECONDS -lt "$deadline" ]; do
    code=$(http GET "$1")
    [ "$code" = 200 ] && break
    [ "$("$docker" inspect -f '{{.State.Running}}' "$2" 2>/dev/null)" = true ] || break
    sleep 0.3
  done
  echo "$code"
}

for tool in python3 curl; do
  command -v "$tool" >/dev/null || { bad setup "$tool is required on the host"; finish; }
done
[ -f "$coco_mini/annotations/instances_val2017.json" ] \
  || { bad setup "coco-mini photographs not found at $coco_mini (set DETMIX_COCO_MINI)"; finish; }

# --- engine and image -----------------------------------------------------------------------
log "engine"
ensure=${DETMIX_ENSURE_ENGINE:-$repo/../shared/docker/ensure-engine.sh}
if [ -x "$ensure" ]; then
  docker=$("$ensure" --print-client) || { bad engine "$ensure failed"; finish; }
elif docker info >/dev/null 2>&1; then
  log "no $ensure; using the running engine of \`docker\`"
else
  bad engine "no Docker engine: $ensure is missing and \`docker info\` fails"
  finish
fi
docker_ready=1

log "building $image"
build_secret=()
[ -s "$ca" ] && build_secret=(--secret "id=pip_ca,src=$ca")
build_started=$SECONDS
if DOCKER_BUILDKIT=1 "$docker" build --network host "${build_secret[@]}" --progress plain \
     -f docker/Dockerfile -t "$image" . >"$work/build.log" 2>&1; then
  ok build "$image in $((SECONDS - build_started))s"
  # Earlier builds of the tag, left dangling by this one.
  "$docker" image prune -f --filter label=org.opencontainers.image.title=detmix-service >/dev/null 2>&1 || true
else
  tail -n 40 "$work/build.log"
  bad build "docker build failed (log above)"
  finish
fi

facts=$("$docker" image inspect "$image" --format '{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Healthcheck.Test}}')
probe=$("$docker" run --rm --network none --read-only --entrypoint /bin/sh "$image" -c '
  id -u
  python -c "import torch" 2>/dev/null && echo torch-present
  for t in gcc cc g++ make pip pip3; do command -v "$t" >/dev/null && echo "tool-present:$t"; done
  python -c "import pip" 2>/dev/null && echo pip-present
  true' 2>&1) || true
user=${facts%%|*}
if [ -n "$user" ] && [ "$user" != root ] && [ "$user" != 0 ] && [ "${user%%:*}" != 0 ] \
   && [ "$(printf '%s\n' "$probe" | head -n 1)" != 0 ] \
   && [[ $facts == *'["python","-m","detmix_service"]'* ]] && [[ $facts == *'"CMD"'* ]] \
   && ! grep -q present <<<"$probe"; then
  ok image "user $user, exec-form entrypoint, HEALTHCHECK, no torch/compiler/pip"
else
  bad image "facts: $facts; probe: $(tr '\n' ' ' <<<"$probe")"
fi

# --- one container as in production ---------------------------------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "running $name on 127.0.0.1:$port"
run_started=$SECONDS
if ! "$docker" run -d --name "$name" --network host \
     --read-only --tmpfs /tmp:size=64m,mode=1777 --cap-drop ALL --security-opt no-new-privileges \
     --memory 1g --memory-swap 1g --pids-limit 128 \
     --health-interval 2s --health-start-period 30s \
     -e DETMIX_HOST=127.0.0.1 -e DETMIX_PORT="$port" -e DETMIX_WORKERS=1 -e DETMIX_DRAIN_S=0.5 \
     "$image" >/dev/null; then
  bad run "docker run failed"
  finish
fi

deadline=$((SECONDS + 60))
code=$(until_ok /healthz "$name")
health=none
while [ "$code" = 200 ] && [ $SECONDS -lt $deadline ]; do
  health=$("$docker" inspect -f '{{.State.Health.Status}}' "$name")
  [ "$health" = starting ] || break
  sleep 0.5
done
if [ "$code" = 200 ] && [ "$health" = healthy ]; then
  ok health "/healthz 200 and HEALTHCHECK healthy $((SECONDS - run_started))s after docker run"
else
  bad health "/healthz $code, HEALTHCHECK $health"
  "$docker" logs "$name" 2>&1 | tail -n 30
  finish
fi

code=$(http GET /readyz)
[ "$code" = 200 ] && ok readyz || bad readyz "$code $(body)"

code=$(http GET /v1/recipes)
if [ "$code" = 200 ] && python3 - "$work/body" <<'EOF'; then ok recipes; else bad recipes "$code $(body)"; fi
import json, sys
text = open(sys.argv[1]).read()
assert all(name in text for name in ("deit", "cutmix", "mixup")), text[:300]
EOF

# --- a real mix on the coco-mini photographs ------------------------------------------------
# Two photographs and their annotations (boxes, polygon or RLE masks) as a MixRequest: for
# multipart without image data (each image names its file part by file_name), for JSON with it.
python3 - "$coco_mini" "$work" <<'EOF' || { bad setup "could not build the requests from $coco_mini"; finish; }
import base64, json, sys
from pathlib import Path
root, work = Path(sys.argv[1]), Path(sys.argv[2])
coco = json.loads((root / "annotations" / "instances_val2017.json").read_text())
counts = {}
for a in coco["annotations"]:
    if not a.get("iscrowd"):
        counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
images = sorted((i for i in coco["images"] if counts.get(i["id"], 0) >= 2), key=lambda i: i["id"])[:2]
ids = {i["id"] for i in images}
anns = [a for a in coco["annotations"] if a["image_id"] in ids]
cats = {a["category_id"] for a in anns}
request = {"images": [{k: i[k] for k in ("id", "width", "height", "file_name")} for i in images],
           "annotations": anns, "categories": [c for c in coco["categories"] if c["id"] in cats],
           "recipe": "cutmix", "seed": 0, "output": {"format": "jpeg", "quality": 85}}
(work / "photos").mkdir()
(work / "text").mkdir()
for i in images:
    (work / "photos" / i["file_name"]).write_bytes((root / "val2017" / i["file_name"]).read_bytes())
    (work / "text" / i["file_name"]).write_text("this is not an image\n" * 20)
(work / "request.json").write_text(json.dumps(request))
(work / "files").write_text("\n".join(i["file_name"] for i in images) + "\n")
bad = json.loads(json.dumps(request))
bad["annotations"][0]["bbox"][2] = -5.0
(work / "bad-request.json").write_text(json.dumps(bad))
as_json = json.loads(json.dumps(request))
for image in as_json["images"]:
    image["data"] = base64.b64encode((root / "val2017" / image["file_name"]).read_bytes()).decode()
as_json.update(recipe="mixup", seed=1, output={"format": "png"})
(work / "request-b64.json").write_text(json.dumps(as_json))
print(f"docker: mixing images {sorted(ids)} with {len(anns)} annotations", file=sys.stderr)
EOF
mapfile -t photos <"$work/files"

check_mix() {  # check_mix FORMAT: the answer in $work/body against the request
  python3 - "$work/body" "$work/request.json" "$1" <<'EOF'
import base64, json, sys
out = json.load(open(sys.argv[1]))
sent = json.load(open(sys.argv[2]))
fmt = sys.argv[3]
images, anns = out["images"], out["annotations"]
assert len(images) == len(sent["images"]), f"{len(images)} images back for {len(sent['images'])} sent"
magic = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}[fmt]
for image in images:
    data = base64.b64decode(image["data"])
    assert image["format"] == fmt and data.startswith(magic), f"image {image['id']} is not {fmt}: {data[:8]!r}"
    assert image["width"] > 0 and image["height"] > 0 and image["mix"]["params"]["mode"] in ("cutmix", "mixup")
assert anns, "no annotations came back"
ids = {i["id"] for i in images}
for a in anns:
    x, y, w, h = a["bbox"]
    assert a["image_id"] in ids and w > 0 and h > 0 and 0 < a["mix_weight"] <= 1, a
modes = sorted({i["mix"]["params"]["mode"] for i in images})
print(f"{len(images)} {fmt} images ({', '.join(modes)}), {len(anns)} annotations, {len(out['dropped'])} dropped")
EOF
}

parts=()
for f in "${photos[@]}"; do parts+=(-F "images=@$work/photos/$f;type=image/jpeg"); done
code=$(http POST /v1/mix -F "request=<$work/request.json" "${parts[@]}")
summary=
if [ "$code" = 200 ] && summary=$(check_mix jpeg 2>&1); then ok mix "multipart: $summary"; else bad mix "$code $(body) $summary"; fi

code=$(http POST /v1/mix -H 'Content-Type: application/json' --data-binary "@$work/request-b64.json")
summary=
if [ "$code" = 200 ] && summary=$(check_mix png 2>&1); then ok mix-json "base64 JSON: $summary"; else bad mix-json "$code $(body) $summary"; fi

# --- bad requests ---------------------------------------------------------------------------
code=$(http POST /v1/mix -F "request=<$work/request.json" -F "images=@$work/text/${photos[0]};type=image/jpeg" \
  -F "images=@$work/photos/${photos[1]};type=image/jpeg")
if [ "$code" = 415 ]; then ok bad-media "415 $(body 200)"; else bad bad-media "expected 415, got $code $(body)"; fi

code=$(http POST /v1/mix -F "request=<$work/bad-request.json" "${parts[@]}")
if [ "$code" = 422 ] && grep -q '"bbox"' "$work/body"; then ok bad-coco "422 $(body 200)"; else bad bad-coco "expected 422 naming bbox, got $code $(body)"; fi

# --- the metrics saw all that ---------------------------------------------------------------
code=$(http GET /metrics)
summary=
if [ "$code" = 200 ] && summary=$(python3 - "$work/body" 2>&1 <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
def value(name, **labels):
    for line in text.splitlines():
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if m and m[1] == name and all(f'{k}="{v}"' in (m[2] or "") for k, v in labels.items()):
            return float(m[3])
    return 0.0
mixed = value("detmix_images_mixed_total", mode="cutmix") + value("detmix_images_mixed_total", mode="mixup")
media = value("detmix_rejections_total", reason="unsupported_media_type")
invalid = value("detmix_rejections_total", reason="invalid_input")
assert mixed >= 4 and media >= 1 and invalid >= 1, (mixed, media, invalid)
print(f"images mixed {mixed:g}, rejections: unsupported_media_type {media:g}, invalid_input {invalid:g}")
EOF
); then ok metrics "$summary"; else bad metrics "$code $summary $(body 300)"; fi

# --- graceful shutdown ----------------------------------------------------------------------
stop_started=$SECONDS
"$docker" stop -t 30 "$name" >/dev/null || true
exit_code=$("$docker" inspect -f '{{.State.ExitCode}}' "$name" 2>/dev/null || echo unknown)
"$docker" logs "$name" >"$work/container.log" 2>&1 || true
if [ "$exit_code" = 0 ] && grep -q 'Application shutdown complete' "$work/container.log" \
   && grep -q 'Finished server process' "$work/container.log"; then
  ok shutdown "SIGTERM -> exit 0 in $((SECONDS - stop_started))s, graceful shutdown logged"
else
  tail -n 20 "$work/container.log"
  bad shutdown "exit code $exit_code; graceful shutdown lines missing?"
fi

# --- the same image through docker/compose.yaml ---------------------------------------------
# Debian's docker-compose 1.29 (no `docker compose` plugin here); the image built above, not a
# second build; a project name and a port of its own, so parallel runs never meet.
if ! command -v docker-compose >/dev/null; then
  log "installing Debian's docker-compose"
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends docker-compose; } >"$work/apt.log" 2>&1 || true
  command -v docker-compose >/dev/null \
    || { tail -n 20 "$work/apt.log"; bad compose "docker-compose missing and apt-get could not install it"; finish; }
fi
project=${name}-compose
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
coco_dir=$(cd "$coco_mini" && pwd)
compose() {
  DETMIX_IMAGE="$image" DETMIX_PORT="$port" DETMIX_COCO_DIR="$coco_dir" DETMIX_HEALTH_INTERVAL=1s \
    DETMIX_DRAIN_S=0.5 docker-compose -p "$project" -f docker/compose.yaml "$@"
}

if compose config >"$work/compose-config.yaml" 2>"$work/compose.log" \
   && grep -q "image: $image\$" "$work/compose-config.yaml" \
   && grep -q "source: $coco_dir\$" "$work/compose-config.yaml"; then
  ok compose-config "docker-compose $(docker-compose version --short 2>/dev/null) accepts docker/compose.yaml"
else
  bad compose-config "$(tail -n 20 "$work/compose.log" "$work/compose-config.yaml" | tr '\n' ' ')"
  finish
fi

log "compose project $project on 127.0.0.1:$port"
up_started=$SECONDS
compose_up=1
if compose up -d --no-build >"$work/compose.log" 2>&1 && cid=$(compose ps -q detmix 2>>"$work/compose.log") \
   && [ -n "$cid" ]; then
  ok compose-up "container ${cid:0:12} from $image"
else
  tail -n 20 "$work/compose.log"
  bad compose-up "docker-compose up -d --no-build failed (log above)"
  finish
fi

deadline=$((SECONDS + 60))
ready=$(until_ok /readyz "$cid")
code=$(http GET /v1/datasets)
if [ "$ready" = 200 ] && [ "$code" = 200 ] \
   && python3 -c 'import json, sys; assert "coco-mini" in {d["name"] for d in json.load(open(sys.argv[1]))}' "$work/body" 2>/dev/null; then
  ok compose-ready "/readyz 200 $((SECONDS - up_started))s after up, /v1/datasets lists coco-mini"
else
  "$docker" logs "$cid" 2>&1 | tail -n 30
  bad compose-ready "/readyz $ready, /v1/datasets $code $(body)"
fi

code=$(http POST /v1/datasets/coco-mini/batch -H 'Content-Type: application/json' \
  --data '{"batch_size": 2, "seed": 0, "recipe": "cutmix"}')
summary=
if [ "$code" = 200 ] && summary=$(python3 - "$work/body" "$coco_dir/annotations/instances_val2017.json" 2>&1 <<'EOF'
import base64, json, sys
out = json.load(open(sys.argv[1]))
images, ids = out["images"], {i["id"] for i in json.load(open(sys.argv[2]))["images"]}
assert len(images) == 2 and out["annotations"], (len(images), len(out["annotations"]))
for image in images:
    assert image["id"] in ids and base64.b64decode(image["data"])[:3] == b"\xff\xd8\xff", image["id"]
print(f"{len(images)} coco-mini images mixed, {len(out['annotations'])} annotations")
EOF
); then ok compose-batch "$summary"; else bad compose-batch "$code $summary $(body 200)"; fi

facts=$("$docker" inspect -f '{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.Memory}}|{{json .HostConfig.Tmpfs}}|{{.Config.User}}' "$cid" 2>&1) || true
uid=$("$docker" exec "$cid" id -u 2>&1) || true
IFS='|' read -r ro memory tmpfs user <<<"$facts"
if [ "$ro" = true ] && [ "$memory" = $((2 * 1024 * 1024 * 1024)) ] && [[ $tmpfs == *'"/tmp":'* ]] \
   && [ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] && [ "$uid" != 0 ] && [ -n "$uid" ]; then
  ok compose-limits "read-only root, memory 2 GiB, tmpfs $tmpfs, user $user (uid $uid)"
else
  bad compose-limits "inspect: $facts; id -u: $uid"
fi

# Root in the container too (-u 0): only the read-only mount, not file permissions, stops it.
root_err=$("$docker" exec -u 0 "$cid" sh -c 'echo x >/detmix-probe' 2>&1) && root_err=written
user_err=$("$docker" exec "$cid" sh -c 'echo x >/detmix-probe' 2>&1) && user_err=written
tmp_out=$("$docker" exec "$cid" sh -c 'echo x >/tmp/detmix-probe && cat /tmp/detmix-probe && rm /tmp/detmix-probe' 2>&1) || true
if [[ $root_err == *'Read-only file system'* ]] && [ "$user_err" != written ] && [ "$tmp_out" = x ]; then
  ok compose-fs "writing / fails (read-only file system), /tmp is writable"
else
  bad compose-fs "/ as root: $root_err; / as user: $user_err; /tmp: $tmp_out"
fi

health=none
while [ $SECONDS -lt $deadline ]; do
  health=$("$docker" inspect -f '{{.State.Health.Status}}' "$cid" 2>/dev/null || echo gone)
  [ "$health" = starting ] || break
  sleep 0.5
done
if [ "$health" = healthy ]; then
  ok compose-health "healthy $((SECONDS - up_started))s after up"
else
  bad compose-health "health $health"
fi

stop_started=$SECONDS
compose stop -t 30 >>"$work/compose.log" 2>&1 || true
exit_code=$("$docker" inspect -f '{{.State.ExitCode}}' "$cid" 2>/dev/null || echo unknown)
"$docker" logs "$cid" >"$work/container.log" 2>&1 || true
stop_s=$((SECONDS - stop_started))
compose down -t 5 -v --remove-orphans >>"$work/compose.log" 2>&1 || true
left=$("$docker" ps -aq --filter "label=com.docker.compose.project=$project")
if [ "$exit_code" = 0 ] && grep -q 'Application shutdown complete' "$work/container.log" && [ -z "$left" ]; then
  compose_up=
  ok compose-stop "SIGTERM -> exit 0 in ${stop_s}s, graceful shutdown logged, down removed it"
else
  tail -n 20 "$work/container.log" "$work/compose.log"
  bad compose-stop "exit code $exit_code; left after down: ${left:-none}"
fi

finish
