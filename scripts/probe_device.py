"""Print what the GPU machine offers that the backends rely on (versions, kernels, APIs)."""
import importlib, sys, time

def show(label, fn):
    try:
        print(f"{label}: {fn()}")
    except Exception as e:  # a probe reports, it does not stop
        print(f"{label}: FAILED {type(e).__name__}: {e}")

import numpy, torch
show("python", lambda: sys.version)
show("numpy", lambda: numpy.__version__)
show("torch", lambda: (torch.__version__, torch.version.cuda, torch.cuda.get_device_name()))
for mod in ("triton", "cupy", "transformers", "pytest", "hypothesis", "matplotlib", "nbclient", "ipykernel", "ml_dtypes"):
    show(mod, lambda m=mod: importlib.import_module(m).__version__)
show("cupy device", lambda: __import__("cupy").cuda.runtime.getDeviceCount())
show("cupy matmul", lambda: float((__import__("cupy").ones((64, 64)) @ __import__("cupy").ones((64, 64))).sum()))
show("cupy RawKernel", lambda: __import__("cupy").RawKernel(r'extern "C" __global__ void f(float* x){x[threadIdx.x]=threadIdx.x;}', "f"))
def flash_lse():
    q = torch.randn(1, 4, 256, 128, device="cuda", dtype=torch.bfloat16)
    r = torch.ops.aten._scaled_dot_product_flash_attention(q, q, q, 0.0, True, False)
    return [tuple(t.shape) if hasattr(t, "shape") else t for t in r[:2]]
show("aten flash with lse", flash_lse)
def flex():
    from torch.nn.attention.flex_attention import flex_attention
    q = torch.randn(1, 4, 256, 64, device="cuda", dtype=torch.bfloat16)
    f = torch.compile(flex_attention)
    o = f(q, q, q, return_lse=True)
    return [tuple(t.shape) for t in o]
show("flex_attention lse", flex)
def lower_right():
    from torch.nn.attention.bias import causal_lower_right
    q = torch.randn(1, 4, 8, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 4, 32, 64, device="cuda", dtype=torch.bfloat16)
    return tuple(torch.nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=causal_lower_right(8, 32)).shape)
show("sdpa causal_lower_right", lower_right)
show("sdpa gqa kw", lambda: tuple(torch.nn.functional.scaled_dot_product_attention(torch.randn(1,8,16,64,device="cuda"), torch.randn(1,2,16,64,device="cuda"), torch.randn(1,2,16,64,device="cuda"), enable_gqa=True).shape))
