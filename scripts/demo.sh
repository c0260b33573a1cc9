#!/usr/bin/env bash
# make demo: the whole pipeline on a freshly built sample model, each step printed with where its
# output went. Everything lands in demo-out/ (removed and rebuilt on every run).
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo-out
tfpack=.venv/bin/tfpack
image=tfpack-demo/fraud-scorer:1

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

rm -rf "$out"
step "making a sample Keras model and a signing key -> $out/source, $out/keys"
.venv/bin/python scripts/make_demo_inputs.py "$out"

step "tfpack inspect $out/source/fraud_scorer.keras"
$tfpack inspect "$out/source/fraud_scorer.keras"

step "tfpack convert -> $out/models/fraud-scorer/1 (SavedModel, goldens, warmup, provenance)"
$tfpack convert "$out/source/fraud_scorer.keras" --name fraud-scorer --output-dir "$out/models"

step "tfpack sign -> $out/models/fraud-scorer/1/model.sig"
$tfpack sign "$out/models/fraud-scorer/1" --key "$out/keys/signing.pem"
$tfpack verify "$out/models/fraud-scorer/1" --public-key "$out/keys/signing.pub.pem"

step "tfpack build -> image $image (the first run builds the embedded runtime base: a few minutes)"
$tfpack build "$out/models/fraud-scorer" --tag "$image" --base embedded --public-key "$out/keys/signing.pub.pem"

step "tfpack smoke $image -> $out/smoke.json, $out/smoke.xml"
$tfpack smoke "$image" --model fraud-scorer --report "$out/smoke.json" --junit "$out/smoke.xml"

# The demo image was built here and never pushed, so it has no registry digest to pin: --allow-tag
# deploys the tag (a release pushes with 'tfpack build --push' and lets tfpack k8s pin the digest).
step "tfpack k8s -> $out/k8s"
$tfpack k8s --image "$image" --model fraud-scorer --output-dir "$out/k8s" --allow-tag
if command -v kubectl >/dev/null; then
  kubectl kustomize "$out/k8s/overlays/cpu" > "$out/k8s/rendered-cpu.yaml"
  echo "kubectl kustomize $out/k8s/overlays/cpu -> $out/k8s/rendered-cpu.yaml"
fi

step "done: signed model in $out/models, image $image smoke-tested, manifests in $out/k8s"
