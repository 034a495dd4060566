# Sourced by the ncu scripts beside it: model_heads MODEL prints the HQ:HKV:D of a bench model
# name (1.5B and 7B: DeepSeek-R1-Distill-Qwen's shapes; HQ-HKV-D as given), as
# `resa-bench kernels --models` and sdpa_baseline.py --shape read them.
model_heads() {
  case "$1" in
    1.5B) echo 12:2:128 ;;
    7B) echo 28:4:128 ;;
    *) echo "${1//-/:}" ;;
  esac
}
