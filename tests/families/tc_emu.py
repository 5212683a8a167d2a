"""The g++ emulation core shared by the tensor-core families' CPU tests (tc_gather2, tc_gather3, tc_bitmap, tc_scatter,
tc_union): each CUDA thread a std::thread, a block's threads and each warp's lanes meeting at std::barriers; shared
memory a byte array with range checks; 16-byte shared stores, ldmatrix.x4.trans and .x2.trans, mma.sync.m16n8k16
(fp16 / bf16 in, fp32 out) and cp.async with commit / wait groups emulated (g_copy_at_issue 0: a copy lands only when a
wait_group must have it, so a missing wait shows). Each test file adds what its kernels need beyond this (EMU_PRELUDE =
EMU_CORE + its extras)."""

EMU_CORE = r'''
#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>
#define __device__
#define __forceinline__ inline
struct uint2 { unsigned int x, y; };
struct Dim { unsigned int x; };
thread_local Dim threadIdx, blockIdx;
thread_local unsigned char* smem;
template <class T> inline T __ldg(const T* p) { return *p; }
inline unsigned int __cvta_generic_to_shared(const void* p) { return (unsigned int)((const unsigned char*)p - smem); }
struct WarpX { std::barrier<>* bar; unsigned int addr[32]; unsigned int a[32][4]; unsigned int b[32][2]; };
struct Copy { unsigned int dst; const void* src; int n, size; };
struct BlockX { std::barrier<>* bar; WarpX warps[32]; size_t smem_bytes; };
thread_local BlockX* g_block;
thread_local std::vector<std::vector<Copy>> g_groups;  // committed groups, oldest first; the last one is open
int g_copy_at_issue = 1;  // 1: a cp.async lands when issued; 0: at the latest, when wait_group must have it
int g_bf16 = 0;
[[noreturn]] inline void die(const char* what) { std::fprintf(stderr, "%s\n", what); std::abort(); }
inline void __syncthreads() { g_block->bar->arrive_and_wait(); }
inline void chk(unsigned int a, unsigned int n) { if ((size_t)a + n > g_block->smem_bytes) die("shared memory out of range"); }
inline float h2f(unsigned short h) {
    if (g_bf16) { unsigned int u = (unsigned int)h << 16; float f; std::memcpy(&f, &u, 4); return f; }
    _Float16 x; std::memcpy(&x, &h, 2); return (float)x;
}
inline unsigned short f2h(float f) {
    if (g_bf16) {
        unsigned int u;
        std::memcpy(&u, &f, 4);
        return (unsigned short)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
    _Float16 x = (_Float16)f; unsigned short h; std::memcpy(&h, &x, 2); return h;
}
inline unsigned int lds16(unsigned int a) { if (a % 2) die("misaligned lds16"); chk(a, 2); unsigned short v; std::memcpy(&v, smem + a, 2); return v; }
inline void warp_addrs(unsigned int addr) {  // ldmatrix: every lane's row address, seen by the whole warp
    WarpX& w = g_block->warps[threadIdx.x >> 5];
    if (addr % 16) die("ldmatrix row address not 16-byte aligned");
    w.addr[threadIdx.x & 31] = addr;
    w.bar->arrive_and_wait();
}
inline void ldsm_x4_t(unsigned int (&r)[4], unsigned int addr) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    WarpX& w = g_block->warps[threadIdx.x >> 5];
    warp_addrs(addr);
    for (int i = 0; i < 4; ++i)  // .trans: lane (g, q) gets (row 2q, column g), (2q + 1, g) of matrix i
        r[i] = lds16(w.addr[8 * i + 2 * q] + 2 * g) | (lds16(w.addr[8 * i + 2 * q + 1] + 2 * g) << 16);
    w.bar->arrive_and_wait();
}
inline void sts128(unsigned int a, unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
    if (a % 16) die("misaligned st.shared.v4");
    chk(a, 16);
    const unsigned int v[4] = {x, y, z, w};
    std::memcpy(smem + a, v, 16);
}
inline void ldsm_x2_t(unsigned int (&r)[2], unsigned int addr) {  // lanes 0-15 give the rows of matrices 0 and 1
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    WarpX& w = g_block->warps[threadIdx.x >> 5];
    warp_addrs(addr);
    for (int i = 0; i < 2; ++i)
        r[i] = lds16(w.addr[8 * i + 2 * q] + 2 * g) | (lds16(w.addr[8 * i + 2 * q + 1] + 2 * g) << 16);
    w.bar->arrive_and_wait();
}
inline WarpX& share_frags(const unsigned int (&a)[4], unsigned int b0, unsigned int b1) {
    // an mma.sync: every lane's A and B fragment registers, seen by the whole warp (each lane computes its own D)
    const int lane = threadIdx.x & 31;
    WarpX& w = g_block->warps[threadIdx.x >> 5];
    for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i];
    w.b[lane][0] = b0; w.b[lane][1] = b1;
    w.bar->arrive_and_wait();
    return w;
}
inline void mma16816(float (&d)[4], const unsigned int (&a)[4], unsigned int b0, unsigned int b1) {
    const int lane = threadIdx.x & 31;
    WarpX& w = share_frags(a, b0, b1);
    float A[16][16], Bm[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, q = l & 3;
        for (int h = 0; h < 2; ++h) {
            A[g][2 * q + h] = h2f((unsigned short)(w.a[l][0] >> (16 * h)));
            A[g + 8][2 * q + h] = h2f((unsigned short)(w.a[l][1] >> (16 * h)));
            A[g][2 * q + 8 + h] = h2f((unsigned short)(w.a[l][2] >> (16 * h)));
            A[g + 8][2 * q + 8 + h] = h2f((unsigned short)(w.a[l][3] >> (16 * h)));
            Bm[2 * q + h][g] = h2f((unsigned short)(w.b[l][0] >> (16 * h)));
            Bm[2 * q + 8 + h][g] = h2f((unsigned short)(w.b[l][1] >> (16 * h)));
        }
    }
    w.bar->arrive_and_wait();
    const int g = lane >> 2, q = lane & 3;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * q, 2 * q + 1, 2 * q, 2 * q + 1};
    for (int e = 0; e < 4; ++e) {
        float s = d[e];
        for (int k = 0; k < 16; ++k) s += A[rows[e]][k] * Bm[k][cols[e]];
        d[e] = s;
    }
}
inline void do_copy(const Copy& c) {
    chk(c.dst, c.size);
    if (c.n) std::memcpy(smem + c.dst, c.src, c.size); else std::memset(smem + c.dst, 0, c.size);
}
inline void cp_async16(unsigned int dst, const void* src, int src_bytes) {
    if ((src_bytes != 0 && src_bytes != 16) || dst % 16 || (src_bytes && (uintptr_t)src % 16)) die("bad cp.async 16");
    Copy c{dst, src, src_bytes, 16};
    if (g_copy_at_issue) do_copy(c); else g_groups.back().push_back(c);
}
inline void cp_commit() { g_groups.emplace_back(); }
inline void cp_wait(int n) {
    while ((int)g_groups.size() - 1 > n) {
        for (const Copy& c : g_groups.front()) do_copy(c);
        g_groups.erase(g_groups.begin());
    }
}
'''


# the split-K families' extras (tc_bitmap, tc_scatter): fp32 workspace sums and the last-block counter (blocks run one
# after another), warp barriers, 16-bit packing and the plain shared loads / stores their kernels call
EMU_SPLITK = r"""
using std::min; using std::max;
#define __restrict__
struct float4 { float x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline void __stcg(float4* p, float4 v) { *p = v; }
inline float4 __ldcg(const float4* p) { return *p; }
inline void __threadfence() {}
inline void red_add_v4(float4* p, float4 v) { p->x += v.x; p->y += v.y; p->z += v.z; p->w += v.w; }  // blocks in turn
inline int atomicAdd(int* p, int v) { int o = *p; *p += v; return o; }  // blocks run one after another
inline void __syncwarp() { g_block->warps[threadIdx.x >> 5].bar->arrive_and_wait(); }
inline unsigned int pack2f(float lo, float hi) { return (unsigned int)f2h(lo) | ((unsigned int)f2h(hi) << 16); }
inline unsigned int keep(unsigned int x) { return x; }
inline unsigned int lds32(unsigned int a) { if (a % 4) die("misaligned lds32"); chk(a, 4); unsigned int v; std::memcpy(&v, smem + a, 4); return v; }
inline void sts16(unsigned int a, unsigned int v) { if (a % 2) die("misaligned sts16"); chk(a, 2); unsigned short h = v; std::memcpy(smem + a, &h, 2); }
inline void cp_async4(unsigned int dst, const void* src) {
    if (dst % 4 || (uintptr_t)src % 4) die("bad cp.async 4");
    Copy c{dst, src, 4, 4};
    if (g_copy_at_issue) do_copy(c); else g_groups.back().push_back(c);
}
"""


# a runner's pieces (after the kernel, before its main): rd reads an array file (pad: elements of slack past it, for
# kernels whose loads may run past the array's end; 0: exactly the array, so that a read past it is a bug that
# AddressSanitizer or the range checks catch), run_blocks runs the grid's blocks one after another (each block's
# threads std::threads on shared memory holding garbage, as a block's starts), write_arr writes C
EMU_RUN = r"""
template <class T> std::vector<T> rd(const std::string& path, size_t pad = 0) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) die("missing input");
    std::fseek(f, 0, SEEK_END); long n = std::ftell(f); std::fseek(f, 0, SEEK_SET);
    std::vector<T> v(n / sizeof(T) + pad);
    if (n && std::fread(v.data(), 1, n, f) != (size_t)n) die("short read");
    std::fclose(f);
    return v;
}
template <class F> void run_blocks(int grid, int nthreads, size_t smem_bytes, F call) {
    for (int bid = 0; bid < grid; ++bid) {
        std::vector<unsigned char> sm(smem_bytes + 16, 0xAB);  // garbage, as shared memory starts
        BlockX blk; std::barrier<> bar(nthreads); blk.bar = &bar; blk.smem_bytes = smem_bytes;
        std::vector<std::barrier<>*> wb;
        for (int w = 0; w < nthreads / 32; ++w) { wb.push_back(new std::barrier<>(32)); blk.warps[w].bar = wb.back(); }
        std::vector<std::thread> th;
        for (int t = 0; t < nthreads; ++t) th.emplace_back([&, t] {
            threadIdx.x = t; blockIdx.x = bid; smem = sm.data(); g_block = &blk;
            g_groups.clear(); g_groups.emplace_back();
            call();
        });
        for (auto& x : th) x.join();
        for (auto* p : wb) delete p;
    }
}
template <class T> void write_arr(const std::string& path, const std::vector<T>& v, size_t n) {
    FILE* f = std::fopen(path.c_str(), "wb");
    std::fwrite(v.data(), sizeof(T), n, f);
    std::fclose(f);
}
"""

# the split-K families' runner (tc_bitmap, tc_scatter): argv = folder M N K S ARG6 sps ntiles grid smem_bytes
# copy_at_issue bf16 workspace_floats counters; the blocks in turn, then the counters must be back at 0 (and with red
# atomic, WS_CLEAN, the workspace at 0); C (poisoned with NaN before) written to folder/C. splitk_main fills in the
# family's arrays, kernel call and extra output
_SPLITK_MAIN = EMU_RUN + r"""
int main(int argc, char** argv) {
    if (argc != 15) die("usage: folder M N K S ARG6 sps ntiles grid smem copy_at_issue bf16 nws ncnt");
    const std::string d = argv[1];
    const int M = std::atoi(argv[2]), N = std::atoi(argv[3]), K = std::atoi(argv[4]), S = std::atoi(argv[5]);
    const int ARG6 = std::atoi(argv[6]), sps = std::atoi(argv[7]), ntiles = std::atoi(argv[8]), grid = std::atoi(argv[9]);
    const size_t smem_bytes = std::atoi(argv[10]);
    g_copy_at_issue = std::atoi(argv[11]); g_bf16 = std::atoi(argv[12]);
    const long nws = std::atol(argv[13]), ncnt = std::atol(argv[14]);
@ARRAYS@
    auto B = rd<unsigned short>(d + "/B");
    std::vector<float> ws(nws, 0.0f);
    std::vector<int> cnt(ncnt, 0);
    std::vector<unsigned short> C((size_t)M * N + 1, 0x7e00);  // poisoned: NaN
    run_blocks(grid, NTHREADS, smem_bytes, [&] { spmm_kernel(@CALL@); });
    for (int c : cnt) if (c) die("a split-K counter was not reset");
#ifdef WS_CLEAN
    for (float x : ws) if (x != 0.0f) die("red atomic: the workspace was not zeroed for the next launch");
#endif
    write_arr(d + "/C", C, (size_t)M * N);
@TAIL@
    return 0;
}
"""


def splitk_main(arrays: str, call: str, tail: str = "") -> str:
    """The split-K runner's main() for a family: `arrays` the C++ lines reading its A arrays from the folder (rd<T>(d +
    "/name"); B, the workspace ws, the counters cnt and C are the runner's), `call` spmm_kernel's arguments (the sixth
    argv value is ARG6), `tail` lines run after C is written (e.g. a count the emulation kept)."""
    return _SPLITK_MAIN.replace("@ARRAYS@", arrays).replace("@CALL@", call).replace("@TAIL@", tail)


def gxx(folder, source: str):
    """source compiled by g++ (C++20, threads) into folder/k: the executable's Path."""
    import subprocess  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415
    folder = Path(folder)
    (folder / "k.cpp").write_text(source)
    exe = folder / "k"
    proc = subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", "-w", "-o", str(exe), str(folder / "k.cpp")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return exe


def write_inputs(folder, arrays: dict):
    """A fresh folder under folder holding each array (name -> numpy array) as a raw file: a run's inputs."""
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415
    d = Path(tempfile.mkdtemp(dir=folder))
    for name, x in arrays.items():
        x.tofile(d / name)
    return d


def splitk_source(src: str, cfg: dict, prelude: str, main: str) -> str:
    """A split-K family's rendered kernel (tc_bitmap, tc_scatter) as C++ for g++: its #defines and everything after
    `// ---- kernel ----` (the device helpers before it are the prelude's), a plain function with no asm, NTHREADS the
    block's threads, WS_CLEAN where red atomic must leave its workspace zeroed; then the runner's main."""
    import re  # noqa: PLC0415
    head, body = src.split("// ---- kernel ----", 1)
    defines = "\n".join(ln for ln in head.splitlines() if ln.startswith("#define"))
    body = re.sub(r'extern "C" __global__ void __launch_bounds__\([^)]*\)', "void", body)
    body = body.replace("extern __shared__ __align__(16) unsigned char smem[];", "")
    assert "asm" not in body and "__shared__" not in body
    clean = "#define WS_CLEAN 1\n" if cfg.get("red") == "atomic" and cfg["splitk"] > 1 else ""
    return prelude + defines + f"\n#define NTHREADS {32 * cfg['warps']}\n" + clean + body + main


def run_splitk(exe, d, dims: tuple, grid: int, smem_bytes: int, copy_at_issue: int, dtype: str, ws_shape: tuple):
    """splitk_main's executable on the inputs in folder d: dims = (M, N, K, S, ARG6, sps, ntiles), ws_shape = (fp32
    words, counters); C as uint16 bits, M x N."""
    import subprocess  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    m, n = dims[0], dims[1]
    subprocess.run([str(exe), str(d), *map(str, dims), str(grid), str(smem_bytes), str(copy_at_issue),
                    "1" if dtype == "bf16" else "0", *map(str, ws_shape)], check=True, timeout=600)
    return np.fromfile(d / "C", dtype=np.uint16).reshape(m, n)


def as_f64(c16, dtype):
    """16-bit patterns (uint16; fp16 or bf16) as float64."""
    import numpy as np  # noqa: PLC0415
    from sparse_autotune.core.problem import bf16_float  # noqa: PLC0415
    return (bf16_float(c16) if dtype == "bf16" else c16.view(np.float16)).astype(np.float64)


def ref16(a, b16, dtype):
    """float64 A @ B of A's values rounded to the dtype (as the kernels' formats store them) and B's 16-bit patterns."""
    import scipy.sparse as sps  # noqa: PLC0415
    from sparse_autotune.core.problem import half_bits  # noqa: PLC0415
    a = sps.csr_matrix(a)
    a16 = a.copy()
    a16.data = as_f64(half_bits(a.data, dtype), dtype)
    return a16 @ as_f64(b16, dtype)


def rel_err(got, want):
    """Relative Frobenius error (inf where got is not finite; the plain norm where want is zero)."""
    import numpy as np  # noqa: PLC0415
    if not np.isfinite(got).all():
        return np.inf
    den = np.linalg.norm(want)
    return np.linalg.norm(got - want) / den if den else np.linalg.norm(got)
