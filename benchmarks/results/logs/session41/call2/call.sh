set -u
# call 2 (first form of call 3's script): the probe failed at its import (moe_utils.generated.swiglu is the function);
# the bias tests after it ran on the GPU:
# timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_activations.py tests/test_compile.py -k "bias or subset or opcheck_activation"
