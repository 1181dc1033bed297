"""Worker process of the op fuzz test (tests/test_op_safety.py).

Reads one JSON case per line from stdin, makes the call it describes (through
``zfcore.ops`` or ``torch.ops.zfcore``) and answers one JSON line: ``ok``
(the call succeeded and its result equals the reference), ``error`` (a Python
exception: its type and message), or ``junk`` (the call succeeded but its result
is wrong, or it accepted switches that point outside their windows). A case that
kills this process is seen by the parent as a crash.

Memory is capped (RLIMIT_DATA) so that an unchecked huge allocation fails here
with an exception the parent reports, instead of bringing down the machine.
"""

from __future__ import annotations

import json
import resource
import sys
import warnings

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8,
          "bool": torch.bool}


def make_tensor(spec: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec.get("seed", 0))
    shape, dtype, layout = spec["shape"], DTYPES[spec["dtype"]], spec.get("layout", "nchw")
    if spec.get("device") == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    if "values" in spec:  # switches: uint8 offsets below spec["values"]
        t = torch.randint(0, max(1, spec["values"]), shape, generator=g).to(dtype)
    elif dtype.is_floating_point:
        t = torch.randn(shape, generator=g, dtype=torch.float64)
        if spec.get("fill") == "nan" and t.numel():
            t.view(-1)[:: 3] = float("nan")
        if spec.get("fill") == "ties":
            t = t.round()
        t = t.to(dtype)
    else:
        t = torch.randint(0, 4, shape, generator=g).to(dtype)
    if t.dim() == 4 and layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif t.dim() == 4 and layout == "noncontiguous":
        t = torch.cat([t, t], dim=3)[..., ::2]
    elif t.dim() == 4 and layout == "expanded" and t.shape[1] > 0:
        t = t[:, :1].expand(t.shape)
    return t


def decode(value):
    if isinstance(value, dict) and "tensor" in value:
        return make_tensor(value["tensor"])
    if isinstance(value, dict) and "switches_of" in value:
        return switches_of(value["switches_of"])
    if isinstance(value, dict) and "tuple" in value:
        return tuple(decode(v) for v in value["tuple"])
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def switches_of(spec: dict) -> torch.Tensor:
    """Switches recorded by pooling a random input (valid by construction)."""
    from zfcore.ops import reference

    x = make_tensor(spec["x"])
    _, switches = reference.max_pool2d_switches(x.double(), *spec["pool"])
    cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return switches.contiguous(memory_format=torch.channels_last) if cl else switches


def inputs(case: dict):
    return [decode(a) for a in case["args"]], {k: decode(v) for k, v in case.get("kwargs", {}).items()}


def call(case: dict, args, kwargs):
    import zfcore

    if case["entry"] == "torch":
        return getattr(torch.ops.zfcore, case["op"])(*args, **kwargs), args, kwargs
    return getattr(zfcore.ops, case["op"])(*args, **kwargs), args, kwargs


def check_result(case: dict, result, args, kwargs) -> str | None:
    """None when the result is what the reference gives; else what is wrong."""
    from zfcore.ops import checks, reference

    op = case["op"]
    if case["entry"] != "torch":
        # The public functions: their results are compared through the registered
        # ops; here, only that they never accept switches outside their windows.
        if any(t.device.type == "meta" for t in args if isinstance(t, torch.Tensor)):
            return None
        # The generator passes every parameter by keyword (tests/test_op_safety.py).
        if op == "unpool2d":
            k, s, p, size = checks.unpool2d(args[0], args[1], kwargs["kernel_size"], kwargs["stride"],
                                            kwargs["padding"], kwargs["output_size"])
            checks.switch_values(op, args[1], size, k, s, p)
        elif op == "deconv_step":
            k, s, p, size, *_ = checks.deconv_step(
                args[0], args[1], args[2], args[3], kwargs["pool_kernel_size"], kwargs["pool_stride"],
                kwargs["pool_padding"], kwargs["unpooled_size"], kwargs["stride"], kwargs["padding"],
                kwargs["output_padding"], kwargs["groups"], kwargs["dilation"])
            checks.switch_values(op, args[1], size, k, s, p)
        return None
    # The schema's int[2] takes an int or a bool (True is [1, 1]) and its int a
    # bool; the reference's ATen functions do not.
    raw = list(args)
    for i, argument in enumerate(getattr(torch.ops.zfcore, op).default._schema.arguments):
        if str(argument.type) == "List[int]":
            raw[i] = [int(v) for v in raw[i]] if isinstance(raw[i], list) else [int(raw[i])] * 2
        elif isinstance(raw[i], bool) and str(argument.type) == "int":
            raw[i] = int(raw[i])
        elif str(argument.type) == "bool":
            raw[i] = bool(raw[i])
    tensors = [a for a in raw if isinstance(a, torch.Tensor)]
    # As safe as the Python functions: what their checks refuse, the registered op must too.
    checks.registered(op, *raw)
    if any(t.device.type == "meta" for t in tensors):
        return None
    if op == "unpool2d":
        checks.switch_values(op, raw[1], raw[5], *raw[2:5])
    elif op == "gather_switches":
        checks.switch_values(op, raw[1], raw[0].shape[-2:], *raw[2:5])
    elif op == "deconv_step":
        checks.switch_values(op, raw[1], raw[7], *raw[4:7])
    outputs = result if isinstance(result, tuple) else (result,)
    if all(t.numel() == 0 for t in outputs) and any(t.numel() == 0 for t in tensors):
        return None  # empty in, empty out (ATen refuses some empty inputs zfcore accepts, e.g. no channels)
    wide = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in raw]
    if op == "max_pool2d_switches":
        wide[4] = bool(wide[4])
    expected = getattr(reference, op)(*wide)
    got = result if isinstance(result, tuple) else (result,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    same = None  # the reference in the op's own dtype, where NaN patterns need it
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if g.dtype != torch.uint8 and not torch.equal(g.isnan(), e.isnan()):
            # NaN in a weight: which outputs it reaches in half precision is
            # oneDNN's choice (ATen's own convolution, in the same dtype, decides).
            if same is None:
                same = getattr(reference, op)(*[a if not isinstance(a, torch.Tensor) else a for a in raw])
                same = same if isinstance(same, tuple) else (same,)
            if torch.equal(g.isnan(), same[i].isnan()):
                e = e.masked_fill(g.isnan(), float("nan"))
        if g.shape != e.shape:
            return f"shape {list(g.shape)} where the reference gives {list(e.shape)}"
        if g.dtype == torch.uint8:
            if not torch.equal(g, e):
                return "switches differ from the reference"
            continue
        scale = e.abs().nan_to_num(0).amax().item() if e.numel() else 0.0
        tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[g.dtype]
        if not torch.allclose(g.double(), e, rtol=tol, atol=tol * max(1.0, scale), equal_nan=True):
            return f"values differ from the reference (max error {(g.double() - e).abs().nan_to_num(0).max().item():.3g})"
    return None


def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 4 << 30
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    warnings.simplefilter("ignore")
    import zfcore  # noqa: F401  (imported before the first case: its time is not a case's)

    torch.set_num_threads(1)
    for line in sys.stdin:
        case = json.loads(line)
        try:
            args, kwargs = inputs(case)
        except Exception as error:  # noqa: BLE001  (a bug of the test, not of the op)
            sys.stdout.write(json.dumps({"outcome": "setup", "why": f"{type(error).__name__}: {error}"}) + "\n")
            sys.stdout.flush()
            continue
        try:
            result, args, kwargs = call(case, args, kwargs)
        except Exception as error:  # noqa: BLE001  (any Python exception is an answer)
            answer = {"outcome": "error", "type": type(error).__name__, "message": str(error)[:2000]}
        else:
            try:
                wrong = check_result(case, result, args, kwargs)
            except Exception as error:  # noqa: BLE001
                wrong = f"accepted, but checking the result raised {type(error).__name__}: {str(error)[:300]}"
            answer = {"outcome": "junk", "why": wrong} if wrong else {"outcome": "ok"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
