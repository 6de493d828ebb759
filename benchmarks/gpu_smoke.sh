#!/usr/bin/env bash
# A device smoke test for an air-gapped single-GPU node, sized for a 15-minute window.
#
# The node is assumed to have CUDA PyTorch, transformers, peft, accelerate and sentence-transformers,
# but no TRL, datasets or lm-eval, no hub and no package index, and at most 64 MiB can be brought
# along. So, in two steps:
#
#   1. On a machine with a package index (same Python version and platform as the node):
#        benchmarks/gpu_smoke.sh pack
#      builds the wheels of benchmarks/gpu_smoke_wheels.txt (TRL, datasets, lm-eval, semrl's other
#      dependencies and what they need beyond the node's packages) into .whl/wheels/ (ignored by
#      git), then repacks their contents as one xz archive, .whl/gpu_smoke_wheels.tar.xz, leaving
#      out pyarrow's Flight and S3 libraries (datasets uses neither), and checks it is <= 64 MiB.
#   2. Carry the repository and .whl/gpu_smoke_wheels.tar.xz to the node and run
#        benchmarks/gpu_smoke.sh
#      It rebuilds the wheels from the archive, installs them with pip --no-index --no-deps (the
#      node's own torch is never touched), builds the data (the test fixtures: no NTREX download)
#      and a small random sentence-transformers encoder from the tiny model (no hub), and runs
#      `semrl run configs/tiny.yaml` on CUDA in bf16 through every stage, the evaluation, the judge
#      and the report. It prints the dtype, where the policy and the reward encoder were placed,
#      and the step times of each stage.
#
# SMOKE_ALLOW_CPU=1 runs step 2 without a GPU (float32; to check the script itself);
# SMOKE_SKIP_INSTALL=1 skips the wheel install (the packages are there already).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WHL=.whl
PACK=$WHL/gpu_smoke_wheels.tar.xz
LIST=benchmarks/gpu_smoke_wheels.txt
LIMIT=$((64 * 1024 * 1024))

pack() {
  rm -rf "$WHL/wheels" "$WHL/trees" && mkdir -p "$WHL/wheels" "$WHL/trees"
  "$PY" -m pip wheel --no-deps -w "$WHL/wheels" -r "$LIST"
  for w in "$WHL"/wheels/*.whl; do
    "$PY" -m zipfile -e "$w" "$WHL/trees/$(basename "$w")"
  done
  # pyarrow's Flight RPC and S3 filesystem libraries are about a third of its size; nothing in
  # datasets' local-file path loads them (pyarrow.fs imports its S3 module only when asked).
  rm -f "$WHL"/trees/pyarrow-*/pyarrow/libarrow_flight.so* "$WHL"/trees/pyarrow-*/pyarrow/libarrow_python_flight.so* \
    "$WHL"/trees/pyarrow-*/pyarrow/_flight*.so "$WHL"/trees/pyarrow-*/pyarrow/libarrow_s3.so* \
    "$WHL"/trees/pyarrow-*/pyarrow/_s3fs*.so
  tar -cf - -C "$WHL/trees" . | xz -9 -T0 > "$PACK.tmp" && mv "$PACK.tmp" "$PACK"
  size=$(stat -c %s "$PACK")
  echo "wheels: $(du -sb "$WHL/wheels" | cut -f1) bytes as wheels; carried archive $PACK: $size bytes (limit $LIMIT)"
  if [ "$size" -gt "$LIMIT" ]; then echo "error: $PACK is over 64 MiB" >&2; exit 2; fi
}

install() {
  if [ ! -f "$PACK" ]; then
    echo "error: $PACK is missing: run 'benchmarks/gpu_smoke.sh pack' on a machine with a package index and carry it" >&2
    exit 2
  fi
  rm -rf "$WORK/trees" "$WORK/wheels" && mkdir -p "$WORK/trees" "$WORK/wheels"
  xz -dc "$PACK" | tar -xf - -C "$WORK/trees"
  # Zip each tree back into its wheel (pip rewrites RECORD on install, so the pruned pyarrow is fine).
  "$PY" - "$WORK/trees" "$WORK/wheels" <<'EOF'
import sys, zipfile
from pathlib import Path
trees, out = Path(sys.argv[1]), Path(sys.argv[2])
for tree in sorted(trees.iterdir()):
    with zipfile.ZipFile(out / tree.name, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(tree.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(tree).as_posix())
EOF
  "$PY" -m pip install --no-index --no-deps --find-links "$WORK/wheels" -r "$LIST"
  "$PY" -m pip check || echo "warning: pip check reports the above (the node's own packages may be older)"
}

smoke() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/semrl-gpu-smoke.XXXXXX")
  if [ "${SMOKE_ALLOW_CPU:-0}" != 1 ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device (SMOKE_ALLOW_CPU=1 runs on CPU)')"
    DTYPE=bfloat16
  else
    DTYPE=auto
  fi
  [ "${SMOKE_SKIP_INSTALL:-0}" = 1 ] || install
  export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 SEMRL_CACHE_DIR="$WORK/cache"
  "$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path
from fixture_data import write_fixture_data_dir
from sentence_transformers import SentenceTransformer, models
from semrl.models import resolve_model
work = Path(sys.argv[1])
write_fixture_data_dir(work / "data")
# A random encoder from the tiny model: it checks placement and plumbing, not semantics.
tr = models.Transformer(str(resolve_model("tiny")))
SentenceTransformer(modules=[tr, models.Pooling(tr.get_word_embedding_dimension(), "mean")]).save(str(work / "encoder"))
EOF
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  started=$(date +%s)
  # The random encoder cannot pass the semantic reward's language probe, so GRPO trains on chrF +
  # language here; the evaluation still embeds with it (on the process's device).
  timeout 780 "$PY" -m semrl run configs/tiny.yaml --out "$WORK/run" --data-dir "$WORK/data" \
    --set "model.dtype=$DTYPE" \
    --set rewards.encoder.backend=sentence-transformers --set "rewards.encoder.name=$WORK/encoder" \
    --set 'rewards.components=[{name: chrf}, {name: language}]'
  echo "semrl run: $(( $(date +%s) - started )) s"
  "$PY" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
import torch
from semrl.config.experiment import load_config
from semrl.core.layout import RunLayout
from semrl.encoders import build_encoder
from semrl.models import device_of, load_policy
from semrl.train.callbacks import read_log
layout = RunLayout(Path(sys.argv[1]) / "run")
config = load_config(layout.config)
for stage in ("cold_start", "sft", "grpo"):
    st = layout.stage(stage)
    rows = [r for r in read_log(st.log) if "step_time_s" in r]
    times = [r["step_time_s"] for r in rows]
    manifest = json.loads(st.manifest.read_text())
    print(f"[{stage}] output {sorted(p.name for p in st.model.iterdir())[:3]}... wall {manifest['wall_time_s']} s; "
          f"step times (s): {[round(t, 3) for t in times]}")
model, _ = load_policy(config.model, layout.stage("grpo").model)
model.to("cuda" if torch.cuda.is_available() else "cpu")
print("policy dtype", next(model.parameters()).dtype, "device", device_of(model))
encoder = build_encoder(config.rewards.encoder)
print("reward encoder device", next(encoder.model.parameters()).device)
if torch.cuda.is_available():
    print("peak CUDA memory (this check) MiB", round(torch.cuda.max_memory_allocated() / 2**20))
print("report", layout.report_md, layout.report_md.is_file())
EOF
}

case "${1:-smoke}" in
  pack) pack ;;
  smoke) smoke ;;
  *) echo "usage: $0 [pack|smoke]" >&2; exit 2 ;;
esac
