# Sourced by the GPU scripts: what the machine's GPUs are called, for result file names.
#   gpu_name  the first GPU's name ("" without a GPU)
#   gpus      how many GPUs nvidia-smi lists (0 without)
#   gpu_slug  the name in lower-case letters and digits without "nvidia" (H200 -> h200;
#             "nogpu" without a GPU)
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
gpu_slug=$(echo "${gpu_name:-nogpu}" | tr 'A-Z' 'a-z' | sed -e 's/nvidia//' -e 's/[^a-z0-9]//g')
gpu_slug=${gpu_slug:-gpu}
