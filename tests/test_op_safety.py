"""The registered ops are as safe as the Python functions: no bad argument
crashes the process or returns junk, on every entry point and backend.

The fuzz tests generate (hypothesis) valid calls, near-valid variations of them
(layouts, NaN, ties, empty batches) and bad calls (one or two arguments made
wrong: negative, zero, huge, overflowing, the wrong length or type, another
dtype, shape or device, switches outside their windows) for every op, through
``zfcore.ops`` and ``torch.ops.zfcore``. Each call runs in a worker process
(tests/fuzz_worker.py), so a case that kills its process is seen as a crash.
Every call must either succeed with the reference's result or raise a Python
exception that names the op's argument; valid calls must succeed.

ZFCORE_FUZZ_EXAMPLES sets the number of examples per op and entry point.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zfcore.ops import REGISTRATION
from zfcore.ops.schemas import SCHEMAS

NATIVE = REGISTRATION.native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = int(os.environ.get("ZFCORE_FUZZ_EXAMPLES", "1000"))
ARGUMENTS = {name: re.findall(r"(?:Tensor\??|int\[2\]|SymInt\[2\]|int|bool) (\w+)", schema)
             for name, schema in SCHEMAS.items()}
ops = torch.ops.zfcore


# ------------------------------------------------------------------ the worker


class Worker:
    """A fuzz worker process; restarted after a case that ends it."""

    def __init__(self, env: dict | None = None):
        self.env = env
        self.process = None
        self.crashes: list[tuple[dict, str]] = []

    def start(self):
        # The worker imports the zfcore this test imports (the checkout's), installed or not.
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "fuzz_worker.py")], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)

    def run(self, case: dict, timeout: float = 120.0) -> dict:
        if self.process is None or self.process.poll() is not None:
            self.start()
        self.process.stdin.write(json.dumps(case) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        stderr = self.process.stderr.read()[-2000:]
        self.process = None
        return {"outcome": "crash", "why": f"exit status {self.process_returncode(stderr)}: {stderr}"}

    @staticmethod
    def process_returncode(stderr: str) -> str:
        return "signal or timeout" if not stderr else "error"

    def close(self):
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def judge(case: dict, answer: dict, valid: bool) -> None:
    op, outcome = case["op"], answer["outcome"]
    shown = textwrap.shorten(json.dumps(case), 600)
    assert outcome != "setup", f"the test could not build the case's inputs: {answer['why']}\ncase: {shown}"
    assert outcome not in ("crash", "junk"), f"{outcome}: {answer.get('why')}\ncase: {shown}"
    if outcome == "ok":
        return
    message, kind = answer["message"], answer["type"]
    assert not valid, f"a valid call was refused: {kind}: {message}\ncase: {shown}"
    names = ARGUMENTS[op]
    if kind == "RuntimeError":  # torch's own schema check, before any zfcore code
        assert re.search(r"for argument '(\w+)'", message) and re.search(r"for argument '(\w+)'", message)[1] in names, (
            f"{message}\ncase: {shown}")
        return
    assert kind in ("ValueError", "TypeError"), f"{kind}: {message}\ncase: {shown}"
    assert message.startswith(f"{op}: "), f"the message does not name the op: {message}\ncase: {shown}"
    assert any(re.search(rf"\b{n}\b", message) for n in names), (
        f"the message names none of {names}: {message}\ncase: {shown}")


# ------------------------------------------------------------------ generation

FLOATS = ["float32", "float64", "float16", "bfloat16"]
LAYOUTS = ["nchw", "channels_last", "noncontiguous", "expanded"]
BAD_PAIRS = [[-1, -1], [0, 0], [2**31 + 1, 1], [2**62, 2], [2**40, 1], [1, 2, 3], [], [300, 300], [-7, 2]]
BAD_SCALARS = [1.5, "a", None, True]
BAD_DTYPES = ["int32", "int64", "bool", "uint8"]


def tensor(shape, dtype="float32", seed=0, **extra) -> dict:
    return {"tensor": {"shape": list(shape), "dtype": dtype, "seed": seed, **extra}}


@st.composite
def pool_geometry(draw):
    k = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    p = [draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))]
    ceil = draw(st.booleans())
    size = [draw(st.integers(max(1, k[i] - 2 * p[i]), k[i] - 2 * p[i] + 6)) for i in range(2)]
    return k, s, p, ceil, size


def pooled(size, k, s, p, ceil):
    from zfcore.ops.reference import pool_output_size
    return [pool_output_size(size[i], k[i], s[i], p[i], ceil) for i in range(2)]


@st.composite
def conv_geometry(draw, in_size):
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    d = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    kernel = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    p = [draw(st.integers(0, 1)), draw(st.integers(0, 1))]
    op = [draw(st.integers(0, max(s[i], d[i]) - 1)) for i in range(2)]
    for i in range(2):
        if (in_size[i] - 1) * s[i] - 2 * p[i] + d[i] * (kernel[i] - 1) + op[i] + 1 < 1:
            p[i] = 0
    groups = draw(st.sampled_from([1, 1, 2]))
    return s, p, op, groups, d, kernel


def variation(draw, t: dict) -> dict:
    """A near-valid variation of a float tensor: layout, NaN or ties."""
    spec = dict(t["tensor"])
    spec["layout"] = draw(st.sampled_from(LAYOUTS))
    spec["fill"] = draw(st.sampled_from(["randn", "randn", "nan", "ties"]))
    return {"tensor": spec}


def broken_tensor(draw, t: dict) -> dict:
    spec = dict(t["tensor"])
    how = draw(st.sampled_from(["dtype", "dim", "shape", "meta", "empty_channels"]))
    if how == "dtype":
        spec["dtype"] = draw(st.sampled_from(BAD_DTYPES + ["float64" if spec["dtype"] != "float64" else "float32"]))
        spec.pop("values", None)
    elif how == "dim":
        spec["shape"] = spec["shape"][1:] if draw(st.booleans()) else spec["shape"] + [2]
    elif how == "shape":
        i = draw(st.integers(0, len(spec["shape"]) - 1))
        spec["shape"] = [v + (1 if j == i else 0) for j, v in enumerate(spec["shape"])]
    elif how == "meta":
        spec["device"] = "meta"
    else:
        spec["shape"] = [spec["shape"][0], 0, *spec["shape"][2:]]
    return {"tensor": spec}


def bad_value(draw, name: str, value):
    if isinstance(value, dict) and ("tensor" in value or "switches_of" in value):
        if "switches_of" in value:  # switches: another dtype or shape, or values outside the windows
            how = draw(st.sampled_from(["values", "values", "dtype", "shape"]))
            shape = list(value["switches_of"]["out_shape"])
            if how == "values":
                return tensor(shape, "uint8", draw(st.integers(0, 99)), values=draw(st.sampled_from([255, 16, 9])))
            if how == "dtype":
                return tensor(shape, draw(st.sampled_from(["int64", "float32"])), values=4)
            return tensor([v + (i == 3) for i, v in enumerate(shape)], "uint8", values=1)
        return broken_tensor(draw, value)
    if name == "bias":
        return draw(st.sampled_from([tensor([5]), tensor([2, 2]), tensor([1], "float64"), tensor([1], "int64")]))
    if name in ("groups",):
        return draw(st.sampled_from([0, -1, 3, 2**40, 1.5]))
    if name == "ceil_mode":
        return draw(st.sampled_from(["a", 1, None]))
    if name in ("output_size", "unpooled_size"):
        return draw(st.sampled_from([[100, 1], [2**31 + 1, 1], [0, 0], [-5, 3], [2**62, 2**62],
                                     [draw(st.integers(0, 30)), draw(st.integers(0, 30))]] + BAD_SCALARS[:2]))
    return draw(st.sampled_from(BAD_PAIRS + BAD_SCALARS + [[draw(st.integers(-2, 6)), draw(st.integers(-2, 6))]]))


@st.composite
def op_case(draw, op: str, entry: str):
    """(case, valid): a call of ``op`` described for the worker."""
    n, c = draw(st.integers(0, 2)), draw(st.sampled_from([2, 4]))
    dtype, seed = draw(st.sampled_from(FLOATS)), draw(st.integers(0, 2**16))
    k, s, p, ceil, size = draw(pool_geometry())
    out = pooled(size, k, s, p, ceil)
    x = tensor([n, c, *size], dtype, seed)
    switches = {"switches_of": {"x": x["tensor"], "pool": [k, s, p, ceil], "out_shape": [n, c, *out]}}
    y = tensor([n, c, *out], dtype, seed + 1)
    if op == "max_pool2d_switches":
        args = {"x": x, "kernel_size": k, "stride": s, "padding": p, "ceil_mode": ceil}
    elif op == "unpool2d":
        args = {"y": y, "switches": switches, "kernel_size": k, "stride": s, "padding": p, "output_size": size}
    elif op == "gather_switches":
        args = {"x": x, "switches": switches, "kernel_size": k, "stride": s, "padding": p}
    else:
        in_size = size if op == "deconv_step" else out
        cs, cp, cop, groups, cd, kernel = draw(conv_geometry(in_size))
        weight = tensor([c, draw(st.integers(1, 3)), *kernel], dtype, seed + 2)
        bias = draw(st.sampled_from([None, "bias"]))
        if bias:
            bias = tensor([weight["tensor"]["shape"][1] * groups], dtype, seed + 3)
        conv = {"stride": cs, "padding": cp, "output_padding": cop, "groups": groups, "dilation": cd}
        if op == "relu_conv_transpose2d":
            args = {"y": y, "weight": weight, "bias": bias, **conv}
        else:
            args = {"y": y, "switches": switches, "weight": weight, "bias": bias, "pool_kernel_size": k,
                    "pool_stride": s, "pool_padding": p, "unpooled_size": size, **conv}
    for name in ("x", "y", "weight"):
        if name in args and draw(st.booleans()):
            args[name] = variation(draw, args[name])
    if args.get("weight") and args["weight"]["tensor"].get("layout") == "expanded":
        args["weight"]["tensor"]["layout"] = "nchw"
    valid = True
    names = [a for a in ARGUMENTS[op] if a in args]
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        name = draw(st.sampled_from(names))
        args[name] = bad_value(draw, name, args[name])
        valid = False
    if entry == "torch":
        case = {"op": op, "entry": entry, "args": [args[a] for a in ARGUMENTS[op]]}
    else:
        tensors = [a for a in ARGUMENTS[op] if a in ("x", "y", "switches", "weight", "bias")]
        case = {"op": op, "entry": entry, "args": [args[a] for a in tensors],
                "kwargs": {a: v for a, v in args.items() if a not in tensors}}
    return case, valid


ENTRIES = [(op, entry) for op in SCHEMAS for entry in ("torch", "ops") if not (op == "gather_switches" and entry == "ops")]


@pytest.mark.parametrize("op, entry", ENTRIES)
def test_fuzzed_calls_never_crash_and_errors_name_the_argument(worker, op, entry):
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(op_case(op, entry))
    def check(generated):
        case, valid = generated
        judge(case, worker.run(case), valid)

    check()


# ------------------------------------------------------- the issue's findings


def test_registered_deconv_step_refuses_an_unpooled_size_pooling_cannot_give():
    """Found from outside: from y [1,1,2,1] pooled 2x2/s3 the registered op
    returned a [1,2,100,1] map for unpooled_size [100, 1], and allocated until the
    OOM killer ended the process for [2**31+1, 1]."""
    y, sw, w = torch.randn(1, 1, 2, 1), torch.zeros(1, 1, 2, 1, dtype=torch.uint8), torch.randn(1, 2, 3, 3)
    for size, message in (([100, 1], r"unpooled_size \[100, 1\] cannot be pooled"),
                          ([2**31 + 1, 1], "unpooled_size must be at most")):
        with pytest.raises(ValueError, match=message):
            ops.deconv_step(y, sw, w, None, [2, 2], [3, 3], [0, 0], size, [1, 1], [0, 0], [0, 0], 1, [1, 1])
    assert ops.deconv_step(y, sw, w, None, [2, 2], [3, 3], [0, 0], [5, 2], [1, 1], [0, 0], [0, 0], 1,
                           [1, 1]).shape == (1, 2, 7, 4)


def test_registered_gather_refuses_switches_outside_their_window():
    """Found from outside: switch 12 in a 3x3 window read another element."""
    x = torch.arange(49.0).view(1, 1, 7, 7)
    switches = torch.full((1, 1, 3, 3), 12, dtype=torch.uint8)  # row 4 of a 3-row window: inside x
    with pytest.raises(ValueError, match="gather_switches: switches point outside their 3x3 window"):
        ops.gather_switches(x, switches, [3, 3], [2, 2], [0, 0])
    valid = torch.full((1, 1, 3, 3), 8, dtype=torch.uint8)
    assert torch.equal(ops.gather_switches(x, valid, [3, 3], [2, 2], [0, 0]).flatten(),
                       torch.tensor([16.0, 18, 20, 30, 32, 34, 44, 46, 48]))


def test_the_reference_backend_applies_the_same_rules():
    """Without the native library, the registered ops run the reference through
    the same argument checks and the same switch rule."""
    code = textwrap.dedent("""
        import sys, warnings, torch
        sys.modules['zfcore._C'] = None
        warnings.simplefilter('ignore')
        import zfcore
        ops = torch.ops.zfcore
        y, sw, w = torch.randn(1, 1, 2, 1), torch.zeros(1, 1, 2, 1, dtype=torch.uint8), torch.randn(1, 2, 3, 3)
        for size in ([100, 1], [2**31 + 1, 1]):
            try:
                ops.deconv_step(y, sw, w, None, [2, 2], [3, 3], [0, 0], size, [1, 1], [0, 0], [0, 0], 1, [1, 1])
                print('accepted')
            except ValueError as e:
                print(e)
        try:
            ops.gather_switches(torch.randn(1, 1, 7, 7), torch.full((1, 1, 3, 3), 12, dtype=torch.uint8),
                                [3, 3], [2, 2], [0, 0])
            print('accepted')
        except ValueError as e:
            print(e)
        print(zfcore.backends()['cpu'].available)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.match(r"deconv_step: unpooled_size \(100, 1\) cannot be pooled", lines[0]), lines
    assert re.match(r"deconv_step: unpooled_size \(2147483649, 1\) cannot be pooled", lines[1]), lines
    assert lines[2].startswith("gather_switches: switches point outside their 3x3 window"), lines
    assert lines[3] == "False", lines  # the native CPU backend really was absent


@pytest.mark.skipif(not NATIVE, reason="native library not built")
def test_native_checks_refuse_sizes_that_overflow_before_allocating():
    y, w = torch.randn(1, 2, 3, 3), torch.randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match="relu_conv_transpose2d: stride must be at most"):
        ops.relu_conv_transpose2d(y, w, None, [2**40, 1], [0, 0], [0, 0], 1, [1, 1])
    with pytest.raises(ValueError, match="relu_conv_transpose2d: groups must be a positive int"):
        ops.relu_conv_transpose2d(y, w, None, [1, 1], [0, 0], [0, 0], 2**40, [1, 1])
    huge = torch.randn(1, 1, 1, 1).expand(2**31, 2**31, 1, 1)  # 2^62 elements, no memory
    with pytest.raises(ValueError, match="max_pool2d_switches: x's pooled output would hold more than 2\\^62"):
        ops.max_pool2d_switches(huge, [1, 1], [1, 1], [0, 0], False)
