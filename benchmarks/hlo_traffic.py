"""The kernels of a compiled XLA program and the memory each one reads and writes, from its HLO text.

A step's non-matmul kernels (LayerNorm, GELU, residual adds, bias gradients, pads) are memory-bound: their
time is about (bytes read + bytes written) / the card's bandwidth. Counting those bytes in the program XLA
compiled for a GPU tells which ops a lever must remove, before any GPU time is spent.

Only the entry computation's instructions are counted, each as one kernel: a `while` (model.scan) or a
`conditional` counts its operands and results, not its body's kernels. cuBLAS GEMMs also carry their FLOPs
and Triton GEMM fusions carry their FLOPs (from their dimension numbers), so FP8 products can be timed at
the FP8 rate.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

# Instructions that launch no kernel and move no memory.
_FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "after-all", "partition-id", "replica-id"}
_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][\w-]*)\((.*)$")
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+[a-z0-9]*)\[([\d,]*)\]")
_BITS = re.compile(r"^[a-z]+?(\d+)")


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One instruction of the entry computation: its name, category (see `category`), bytes written (its
    result) and read (its operands' results), the JAX op it came from (metadata op_name, may be ""), and for
    a GEMM (cuBLAS or Triton) its FLOPs (2 per multiply-add; 0 for every other kernel)."""

    name: str
    category: str
    bytes_out: int
    bytes_in: int
    op_name: str
    flops: int = 0

    @property
    def bytes_moved(self) -> int:
        return self.bytes_out + self.bytes_in


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape, e.g. "bf16[512,197,768]{2,1,0}" or a tuple "(f32[2], s32[])"; pred is 1 byte."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        bits = 8 if dtype == "pred" else int(_BITS.match(dtype).group(1))
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        total += count * bits // 8
    return total


def array_dims(shape: str) -> list[int]:
    """The dimensions of an HLO shape's first array: "(bf16[4,16]{1,0}, s8[64])" -> [4, 16]; [] for a scalar."""
    match = _ARRAY.search(shape)
    return [int(d) for d in filter(None, match.group(2).split(","))] if match else []


def gemm_flops(line: str, out_dims: list[int], lhs_dims: list[int]) -> int:
    """FLOPs of a product (a `dot` or a cuBLAS GEMM custom call): 2 x its output's elements x the lhs's
    contracting size, the contracting dimensions read from the line (0 where it names none)."""
    contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}|"lhs_contracting_dimensions":\[([^\]]*)\]', line)
    if not contracting:
        return 0
    depth = 1
    for index in re.findall(r"\d+", contracting.group(1) or contracting.group(2)):
        depth *= lhs_dims[int(index)]
    return 2 * depth * math.prod(out_dims)


def fused_products(hlo_text: str) -> dict[str, tuple[int, bool]]:
    """{computation name: (FLOPs, whether both operands are FP8)} of each non-entry computation holding a
    `dot`: the bodies of Triton GEMM fusions, whose kernel line names the computation it `calls`."""
    products: dict[str, tuple[int, bool]] = {}
    computation, shapes = None, {}
    for line in hlo_text.splitlines():
        header = re.match(r"^%(\S+) \(", line)
        if header:
            computation, shapes = header.group(1), {}
            continue
        match = _INSTRUCTION.match(line)
        if computation is None or not match:
            continue
        name, shape, opcode, rest = match.groups()
        shapes[name] = shape
        if opcode == "dot":
            lhs, rhs = (shapes.get(operand, "") for operand in _operand_names(rest)[:2])
            fp8 = lhs.startswith("f8") and rhs.startswith("f8")
            products[computation] = (gemm_flops(line, array_dims(shape), array_dims(lhs)), fp8)
    return products


def category(opcode: str, line: str) -> str:
    """ "matmul", "matmul:fp8" (cuBLASLt's FP8 GEMM; `entry_kernels` also files Triton's here), "attention",
    "convolution", "collective", "fusion:kLoop" (kInput, ...), "triton", or the opcode."""
    target = re.search(r'custom_call_target="([^"]+)"', line)
    backend_kind = re.search(r'"kind":"([^"]+)"', line)
    if target and target.group(1) == "__cublas$lt$matmul$f8":
        return "matmul:fp8"
    if opcode == "dot" or (target and target.group(1).startswith("__cublas")):
        return "matmul"
    if opcode == "fusion" and backend_kind and "gemm" in backend_kind.group(1):
        return "matmul"  # Triton GEMM fusions (the matmul and what XLA fused into it)
    if target and target.group(1).startswith("__cudnn$fmha"):
        return "attention"
    if opcode == "convolution" or (target and target.group(1).startswith("__cudnn$conv")):
        return "convolution"
    if opcode.startswith(_COLLECTIVES):
        return "collective"
    if opcode == "fusion":
        if backend_kind and backend_kind.group(1) == "__triton":
            return "triton"
        kind = re.search(r"kind=(\w+)", line)
        return f"fusion:{kind.group(1) if kind else '?'}"
    if target:
        return f"custom-call:{target.group(1)}"
    return opcode


def _operand_names(rest: str) -> list[str]:
    """The %names inside the operand list that opens `rest` (up to its closing parenthesis)."""
    depth = 1
    for i, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return re.findall(r"%([\w.\-]+)", rest[:i])
    raise ValueError(f"unbalanced operand list in HLO line: {rest[:80]!r}")


def entry_kernels(hlo_text: str) -> list[Kernel]:
    """The kernels of the entry computation of `hlo_text` (`compiled.as_text()`), in program order."""
    lines = hlo_text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY "))
    except StopIteration:
        raise ValueError("the HLO text has no ENTRY computation") from None
    sizes: dict[str, int] = {}
    dims: dict[str, list[int]] = {}
    products = fused_products(hlo_text)
    kernels = []
    for line in lines[start + 1 :]:
        if line.startswith("}"):
            break
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode, rest = match.groups()
        sizes[name], dims[name] = shape_bytes(shape), array_dims(shape)
        if opcode in _FREE:
            continue
        op_name = re.search(r'op_name="([^"]*)"', line)
        operands = _operand_names(rest)
        kind, flops = category(opcode, line), 0
        if opcode == "custom-call" and kind.startswith("matmul") and operands:  # cuBLAS
            flops = gemm_flops(line, dims[name], dims.get(operands[0], []))
        called = re.search(r"calls=%([\w.\-]+)", line)
        if kind == "matmul" and called and called.group(1) in products:  # a Triton GEMM fusion
            flops, fp8 = products[called.group(1)]
            kind = "matmul:fp8" if fp8 else kind
        kernels.append(
            Kernel(
                name=name,
                category=kind,
                bytes_out=sizes[name],
                bytes_in=sum(sizes.get(operand, 0) for operand in operands),
                op_name=op_name.group(1) if op_name else "",
                flops=flops,
            )
        )
    return kernels


def by_category(kernels: list[Kernel]) -> dict[str, dict[str, float]]:
    """{category: {"kernels": count, "gb": bytes moved / 1e9}}, most bytes first."""
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for kernel in kernels:
        totals[kernel.category][0] += 1
        totals[kernel.category][1] += kernel.bytes_moved
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])
    return {name: {"kernels": count, "gb": moved / 1e9} for name, (count, moved) in ranked}


def by_op(kernels: list[Kernel], categories_left_out: tuple[str, ...] = ()) -> list[dict]:
    """Bytes moved per JAX op, with the block index folded (`block_3` -> `block_*`, so a tower's 12 blocks
    add up; MCi's `blocks_3` -> `blocks_*` within a stage) and the outer `jit(...)` dropped: [{"op",
    "kernels", "gb"}], most bytes first."""
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for kernel in kernels:
        if kernel.category in categories_left_out:
            continue
        op = re.sub(r"^jit\([^)]*\)/", "", re.sub(r"\b(blocks?)_\d+", r"\1_*", kernel.op_name)) or "(no op name)"
        totals[op][0] += 1
        totals[op][1] += kernel.bytes_moved
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])
    return [{"op": op, "kernels": count, "gb": moved / 1e9} for op, (count, moved) in ranked]
