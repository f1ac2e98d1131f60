//! Autograd: every VJP rule against central finite differences, on the CPU backend in f64.
//!
//! For each primitive (and each composite, differentiated through its decomposition) we build
//! `loss = sum(f(x…) · r)` with a fixed random `r`, ask [`silica_tensor::grad`] for d loss / d x
//! and compare with `(loss(x + h·e_j) − loss(x − h·e_j)) / 2h` for every element j.
//!
//! Tolerance. In f64 with h = 1e-5 the central difference has truncation error
//! ≈ h²·|f'''|/6 ≈ 1e-11 for our O(1) functions and rounding error ≈ ε·|loss|/h ≈ 1e-11·|loss|;
//! the check allows 1e-7·(1 + |fd|), four orders above both, and far below any real rule error
//! (a wrong rule is off by O(1)). Inputs keep a margin of ≥ 0.1 from kinks (abs at 0, ties of
//! max/min, reduce-max) so the finite difference never straddles one; ties are tested exactly
//! in their own tests.

mod common;

use common::{rand_float, rng, run_cpu};
use silica_tensor::{
    grad, CmpDir, DType, DotDims, Graph, GraphError, HostTensor, Program, ValueId,
};

type Build = dyn Fn(&mut Graph, &[ValueId]) -> Result<ValueId, GraphError>;

/// Analytic gradients (one per float input) and the loss program, for `f` on `inputs`.
fn setup(inputs: &[HostTensor], f: &Build, seed: u64) -> (Program, Program, Vec<usize>) {
    let mut g = Graph::new();
    let ps: Vec<ValueId> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            g.parameter(&format!("x{i}"), t.dtype(), t.shape().clone())
                .unwrap()
        })
        .collect();
    let y = f(&mut g, &ps).unwrap();
    let yd = g.dims(y).to_vec();
    let mut r = rng(seed);
    let rt = rand_float(&mut r, DType::F64, &yd, -1.0, 1.0);
    let rc = g.constant(rt);
    let y64 = g.convert(y, DType::F64).unwrap();
    let prod = g.mul(y64, rc).unwrap();
    let all: Vec<usize> = (0..yd.len()).collect();
    let loss = g.reduce_sum(prod, &all).unwrap();
    let float_idx: Vec<usize> = (0..inputs.len())
        .filter(|&i| inputs[i].dtype().is_float())
        .collect();
    let wrt: Vec<ValueId> = float_idx.iter().map(|&i| ps[i]).collect();
    let (gg, grads) = grad(&g, loss, &wrt).unwrap();
    let mut outs = vec![("loss".to_string(), loss)];
    for (k, gv) in grads.iter().enumerate() {
        assert_eq!(gg.shape(*gv), gg.shape(wrt[k]), "gradient shape");
        assert_eq!(gg.dtype(*gv), gg.dtype(wrt[k]), "gradient dtype");
        outs.push((format!("grad{k}"), *gv));
    }
    let with_grads = Program::new("grad", gg, outs).unwrap();
    let loss_only = Program::new("loss", g, vec![("loss".into(), loss)]).unwrap();
    (with_grads, loss_only, float_idx)
}

fn scalar_of(t: &HostTensor) -> f64 {
    t.to_f64_vec()[0]
}

/// Checks the gradient of every float input against central differences with step `h` and
/// tolerance `tol·(1 + |fd|)`.
fn check_with(name: &str, inputs: Vec<HostTensor>, f: &Build, h: f64, tol: f64) {
    let (gp, lp, float_idx) = setup(&inputs, f, 7);
    let analytic = run_cpu(&gp, &inputs);
    let base = scalar_of(&run_cpu(&lp, &inputs)[0]);
    assert!(
        (scalar_of(&analytic[0]) - base).abs() <= 1e-12 * (1.0 + base.abs()),
        "{name}: the gradient program changed the loss"
    );
    for (k, &i) in float_idx.iter().enumerate() {
        let ga = analytic[k + 1].to_f64_vec();
        let x = inputs[i].to_f64_vec();
        for j in 0..x.len() {
            let at = |d: f64| {
                let mut v = x.clone();
                v[j] += d;
                let mut ins = inputs.clone();
                ins[i] = HostTensor::from_vec(v, inputs[i].shape().clone())
                    .unwrap()
                    .convert(inputs[i].dtype());
                scalar_of(&run_cpu(&lp, &ins)[0])
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (ga[j] - fd).abs() <= tol * (1.0 + fd.abs()),
                "{name}: d loss / d x{i}[{j}] = {} but finite differences give {fd}",
                ga[j]
            );
        }
    }
}

fn check(name: &str, inputs: Vec<HostTensor>, f: &Build) {
    check_with(name, inputs, f, 1e-5, 1e-7);
}

fn uni(seed: u64, dims: &[usize], lo: f64, hi: f64) -> HostTensor {
    rand_float(&mut rng(seed), DType::F64, dims, lo, hi)
}

/// Values in ±[0.1, 1.5]: a margin from 0 for abs and from each other (checked) for max/min.
fn away_from_zero(seed: u64, dims: &[usize]) -> HostTensor {
    let t = uni(seed, dims, 0.1, 1.5).to_f64_vec();
    let s = uni(seed + 1000, dims, -1.0, 1.0).to_f64_vec();
    let v: Vec<f64> = t
        .iter()
        .zip(&s)
        .map(|(a, b)| if *b < 0.0 { -a } else { *a })
        .collect();
    HostTensor::from_vec(v, dims.to_vec()).unwrap()
}

fn i32s(v: &[i32], dims: &[usize]) -> HostTensor {
    HostTensor::from_vec(v.to_vec(), dims.to_vec()).unwrap()
}

// ------------------------------------------------------------------------ unary

#[test]
fn unary_ops() {
    let d = [2, 3];
    check("neg", vec![uni(1, &d, -2.0, 2.0)], &|g, x| g.neg(x[0]));
    check("abs", vec![away_from_zero(2, &d)], &|g, x| g.abs(x[0]));
    check("exp", vec![uni(3, &d, -2.0, 2.0)], &|g, x| g.exp(x[0]));
    check("log", vec![uni(4, &d, 0.2, 3.0)], &|g, x| g.log(x[0]));
    check("sqrt", vec![uni(5, &d, 0.2, 3.0)], &|g, x| g.sqrt(x[0]));
    check("rsqrt", vec![uni(6, &d, 0.2, 3.0)], &|g, x| g.rsqrt(x[0]));
    check("tanh", vec![uni(7, &d, -2.0, 2.0)], &|g, x| g.tanh(x[0]));
    check("logistic", vec![uni(8, &d, -3.0, 3.0)], &|g, x| {
        g.logistic(x[0])
    });
    check("sin", vec![uni(9, &d, -3.0, 3.0)], &|g, x| g.sin(x[0]));
    check("cos", vec![uni(10, &d, -3.0, 3.0)], &|g, x| g.cos(x[0]));
}

// ----------------------------------------------------------------------- binary

#[test]
fn binary_ops() {
    let d = [3, 4];
    let two = || vec![uni(11, &d, -2.0, 2.0), uni(12, &d, -2.0, 2.0)];
    check("add", two(), &|g, x| g.add(x[0], x[1]));
    check("sub", two(), &|g, x| g.sub(x[0], x[1]));
    check("mul", two(), &|g, x| g.mul(x[0], x[1]));
    check(
        "div",
        vec![uni(13, &d, -2.0, 2.0), away_from_zero(14, &d)],
        &|g, x| g.div(x[0], x[1]),
    );
    // max/min: b = a ± a margin ≥ 0.1, so no element is near a tie.
    let a = uni(15, &d, -2.0, 2.0);
    let off = away_from_zero(16, &d).to_f64_vec();
    let b: Vec<f64> = a
        .to_f64_vec()
        .iter()
        .zip(&off)
        .map(|(x, o)| x + o)
        .collect();
    let b = HostTensor::from_vec(b, d.to_vec()).unwrap();
    check("max", vec![a.clone(), b.clone()], &|g, x| g.max(x[0], x[1]));
    check("min", vec![a, b], &|g, x| g.min(x[0], x[1]));
    check(
        "pow",
        vec![uni(17, &d, 0.3, 2.0), uni(18, &d, -2.0, 2.0)],
        &|g, x| g.pow(x[0], x[1]),
    );
}

#[test]
fn broadcasting_binary_ops_sum_over_the_broadcast_dims() {
    check(
        "add [3] + [2,3]",
        vec![uni(20, &[3], -1.0, 1.0), uni(21, &[2, 3], -1.0, 1.0)],
        &|g, x| g.add(x[0], x[1]),
    );
    check(
        "mul [2,1,4] * [3,1]",
        vec![uni(22, &[2, 1, 4], -1.0, 1.0), uni(23, &[3, 1], -1.0, 1.0)],
        &|g, x| g.mul(x[0], x[1]),
    );
    check(
        "broadcast_in_dim [3] -> [2,3,4] dim 1",
        vec![uni(24, &[3], -1.0, 1.0)],
        &|g, x| g.broadcast_in_dim(x[0], [2, 3, 4], &[1]),
    );
}

// -------------------------------------------------------------- select, convert

#[test]
fn select_and_compare() {
    // The predicate comes from an integer input: no gradient flows through it.
    check(
        "select",
        vec![
            i32s(&[1, 0, 3, 0, 5, -1], &[2, 3]),
            uni(30, &[2, 3], -1.0, 1.0),
            uni(31, &[2, 3], -1.0, 1.0),
        ],
        &|g, x| {
            let z = g.scalar(0.0, DType::I32);
            let p = g.compare(x[0], z, CmpDir::Gt)?;
            g.select(p, x[1], x[2])
        },
    );
    // Compare of float inputs (relu-like): values kept ≥ 0.1 from 0.
    check(
        "relu via compare",
        vec![away_from_zero(32, &[5])],
        &|g, x| {
            let z = g.scalar(0.0, DType::F64);
            let p = g.compare(x[0], z, CmpDir::Gt)?;
            let zero = g.full(0.0, DType::F64, [5])?;
            g.select(p, x[0], zero)
        },
    );
}

#[test]
fn convert_passes_the_gradient_back_in_the_input_dtype() {
    // Through f32: the loss is rounded to f32 (relative 6e-8), so with h = 1e-3 the difference
    // quotient carries ≈ 6e-8·|loss|/1e-3 ≈ 1e-4 of rounding noise; 1e-3 relative covers it.
    check_with(
        "convert f64 -> f32 -> exp -> f64",
        vec![uni(40, &[4], -1.0, 1.0)],
        &|g, x| {
            let y = g.convert(x[0], DType::F32)?;
            let y = g.exp(y)?;
            g.convert(y, DType::F64)
        },
        1e-3,
        1e-3,
    );
    // int -> float stops the gradient; the float input still gets its own.
    check(
        "int convert",
        vec![i32s(&[1, 2, 3], &[3]), uni(41, &[3], -1.0, 1.0)],
        &|g, x| {
            let f = g.convert(x[0], DType::F64)?;
            g.mul(f, x[1])
        },
    );
}

// ------------------------------------------------------------------------ layout

#[test]
fn layout_ops() {
    check("reshape", vec![uni(50, &[2, 6], -1.0, 1.0)], &|g, x| {
        g.reshape(x[0], [3, 2, 2])
    });
    check(
        "transpose",
        vec![uni(51, &[2, 3, 4], -1.0, 1.0)],
        &|g, x| g.transpose(x[0], &[2, 0, 1]),
    );
    check(
        "strided slice",
        vec![uni(52, &[5, 7], -1.0, 1.0)],
        &|g, x| g.slice(x[0], &[1, 0], &[5, 7], &[2, 3]),
    );
    check(
        "concatenate",
        vec![uni(53, &[2, 3], -1.0, 1.0), uni(54, &[2, 2], -1.0, 1.0)],
        &|g, x| g.concat(&[x[0], x[1], x[0]], 1),
    );
    check(
        "pad with interior and a differentiable value",
        vec![uni(55, &[2, 3], -1.0, 1.0), uni(56, &[], -1.0, 1.0)],
        &|g, x| g.pad(x[0], x[1], &[1, 0], &[2, 1], &[1, 2]),
    );
}

#[test]
fn gather_scatters_back_with_repeats_and_clamping() {
    // Index 0 twice (accumulates), 7 clamps to 3, -2 clamps to 0.
    check(
        "gather axis 0",
        vec![
            uni(60, &[4, 3], -1.0, 1.0),
            i32s(&[0, 2, 0, 7, -2, 1], &[2, 3]),
        ],
        &|g, x| g.gather(x[0], x[1], 0),
    );
    check(
        "gather axis 1",
        vec![uni(61, &[2, 5, 3], -1.0, 1.0), i32s(&[4, 4, 1], &[3])],
        &|g, x| g.gather(x[0], x[1], 1),
    );
}

#[test]
fn dynamic_slices() {
    // Start 3 on a dim of 4 with size 2 clamps to 2, as in the forward.
    check(
        "dynamic-slice",
        vec![
            uni(70, &[4, 5], -1.0, 1.0),
            i32s(&[3], &[]),
            i32s(&[1], &[]),
        ],
        &|g, x| g.dynamic_slice(x[0], &[x[1], x[2]], &[2, 3]),
    );
    check(
        "dynamic-update-slice",
        vec![
            uni(71, &[4, 5], -1.0, 1.0),
            uni(72, &[2, 2], -1.0, 1.0),
            i32s(&[1], &[]),
            i32s(&[9], &[]),
        ],
        &|g, x| g.dynamic_update_slice(x[0], x[1], &[x[2], x[3]]),
    );
}

// ------------------------------------------------------------------- reductions

#[test]
fn reductions() {
    check(
        "reduce sum",
        vec![uni(80, &[2, 3, 4], -1.0, 1.0)],
        &|g, x| g.reduce_sum(x[0], &[0, 2]),
    );
    // Distinct values 0.2 apart (shuffled), so no tie is within h.
    let mut v: Vec<f64> = (0..24).map(|i| i as f64 * 0.2).collect();
    let perm = uni(81, &[24], 0.0, 1.0).to_f64_vec();
    let mut idx: Vec<usize> = (0..24).collect();
    idx.sort_by(|&a, &b| perm[a].total_cmp(&perm[b]));
    v = idx.iter().map(|&i| v[i]).collect();
    check(
        "reduce max",
        vec![HostTensor::from_vec(v, vec![2, 3, 4]).unwrap()],
        &|g, x| g.reduce_max(x[0], &[1]),
    );
}

// -------------------------------------------------------------------------- dot

#[test]
fn dot_general_all_dim_kinds() {
    check(
        "matmul",
        vec![uni(90, &[3, 4], -1.0, 1.0), uni(91, &[4, 2], -1.0, 1.0)],
        &|g, x| g.matmul(x[0], x[1]),
    );
    check(
        "linear",
        vec![uni(92, &[2, 3, 4], -1.0, 1.0), uni(93, &[5, 4], -1.0, 1.0)],
        &|g, x| g.linear(x[0], x[1]),
    );
    // Batch dims not leading, two contracting dims in crossed order, free dims on both sides.
    check(
        "dot_general",
        vec![
            uni(94, &[3, 2, 4, 5], -1.0, 1.0), // lhs: free 3, batch 2, contract 4, contract 5
            uni(95, &[5, 2, 6, 4], -1.0, 1.0), // rhs: contract 5, batch 2, free 6, contract 4
        ],
        &|g, x| {
            g.dot_general(
                x[0],
                x[1],
                DotDims {
                    lhs_batch: vec![1],
                    rhs_batch: vec![1],
                    lhs_contract: vec![3, 2],
                    rhs_contract: vec![0, 3],
                },
            )
        },
    );
}

// ------------------------------------------------------------------- composites

#[test]
fn scatter_add_passes_the_operand_through_and_gathers_for_updates() {
    // Index 1 twice (both updates get its cotangent), 9 and -1 out of range (dropped: zero).
    check(
        "scatter-add axis 0",
        vec![
            uni(62, &[4, 3], -1.0, 1.0),
            i32s(&[1, 3, 1, 9, -1], &[5]),
            uni(63, &[5, 3], -1.0, 1.0),
        ],
        &|g, x| g.scatter_add(x[0], x[1], x[2], 0),
    );
    check(
        "scatter-add axis 1, 2-d indices",
        vec![
            uni(64, &[2, 4, 3], -1.0, 1.0),
            i32s(&[0, 3, 3, 2], &[2, 2]),
            uni(65, &[2, 2, 2, 3], -1.0, 1.0),
        ],
        &|g, x| g.scatter_add(x[0], x[1], x[2], 1),
    );
}

#[test]
fn moe_mlp_through_both_decompositions() {
    // 3 tokens × 2 slots over 4 experts (6 ≥ 4: every expert on every token, weighted densely)
    // and 1 token × 2 slots over 4 (2 < 4: the selected experts' weights gathered). Expert ids
    // are inputs (no gradient); routing weights, x and all expert weights get one.
    for (t, ids) in [(3usize, vec![0, 2, 3, 0, 1, 3]), (1, vec![2, 0])] {
        check(
            &format!("moe_mlp T={t}"),
            vec![
                uni(110, &[t, 4], -1.0, 1.0),
                i32s(&ids, &[t, 2]),
                uni(111, &[t, 2], 0.1, 0.9),
                uni(112, &[4, 3, 4], -1.0, 1.0),
                uni(113, &[4, 3, 4], -1.0, 1.0),
                uni(114, &[4, 4, 3], -1.0, 1.0),
            ],
            &|g, x| g.moe_mlp(x[0], x[1], x[2], x[3], x[4], x[5]),
        );
    }
}

#[test]
fn composites_through_their_decomposition() {
    check(
        "rms_norm",
        vec![uni(100, &[2, 3, 8], -1.0, 1.0), uni(101, &[8], 0.5, 1.5)],
        &|g, x| g.rms_norm(x[0], x[1], 1e-6),
    );
    check("softmax", vec![uni(102, &[2, 5], -2.0, 2.0)], &|g, x| {
        g.softmax(x[0], 1)
    });
    check("silu", vec![uni(103, &[2, 5], -3.0, 3.0)], &|g, x| {
        g.silu(x[0])
    });
    check(
        "rope",
        vec![
            uni(104, &[1, 2, 3, 4], -1.0, 1.0),
            uni(105, &[1, 3, 4], -1.0, 1.0),
            uni(106, &[1, 3, 4], -1.0, 1.0),
        ],
        &|g, x| g.rope(x[0], x[1], x[2]),
    );
    // Grouped-query attention (4 query heads over 2 kv heads) with a causal mask input.
    let mask: Vec<f64> = (0..2 * 3 * 3)
        .map(|i| {
            let (q, k) = ((i / 3) % 3, i % 3);
            if k <= q {
                0.0
            } else {
                -1e9
            }
        })
        .collect();
    check(
        "attention",
        vec![
            uni(107, &[2, 4, 3, 4], -1.0, 1.0),
            uni(108, &[2, 2, 3, 4], -1.0, 1.0),
            uni(109, &[2, 2, 3, 2], -1.0, 1.0),
            HostTensor::from_vec(mask, vec![2, 3, 3]).unwrap(),
        ],
        &|g, x| g.attention(x[0], x[1], x[2], x[3], 0.5),
    );
}

#[test]
fn softcapped_attention_gradients() {
    let mask: Vec<f64> = (0..2 * 3 * 3)
        .map(|i| if (i % 3) > (i / 3) % 3 { -1e9 } else { 0.0 })
        .collect();
    check(
        "attention softcap",
        vec![
            uni(117, &[2, 4, 3, 4], -1.0, 1.0),
            uni(118, &[2, 2, 3, 4], -1.0, 1.0),
            uni(119, &[2, 2, 3, 2], -1.0, 1.0),
            HostTensor::from_vec(mask, vec![2, 3, 3]).unwrap(),
        ],
        &|g, x| g.attention_softcapped(x[0], x[1], x[2], x[3], 0.9, Some(0.6)),
    );
}

#[test]
fn a_value_used_twice_accumulates_both_gradients() {
    // Like tied embeddings: the table is both gathered and used in a matmul.
    check(
        "tied",
        vec![uni(110, &[5, 3], -1.0, 1.0), i32s(&[1, 4, 1], &[3])],
        &|g, x| {
            let e = g.gather(x[0], x[1], 0)?; // [3, 3]
            let h = g.tanh(e)?;
            g.linear(h, x[0]) // [3, 5]
        },
    );
}

// ------------------------------------------------------------------------- ties

/// Gradient of `sum(f(x…))` (seed all ones) evaluated exactly.
fn exact_grads(inputs: Vec<HostTensor>, f: &Build) -> Vec<Vec<f64>> {
    let mut g = Graph::new();
    let ps: Vec<ValueId> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| g.parameter(&format!("x{i}"), t.dtype(), t.shape().clone()))
        .collect::<Result<_, _>>()
        .unwrap();
    let y = f(&mut g, &ps).unwrap();
    let all: Vec<usize> = (0..g.rank(y)).collect();
    let loss = g.reduce_sum(y, &all).unwrap();
    let (gg, grads) = grad(&g, loss, &ps).unwrap();
    let outs = grads
        .iter()
        .enumerate()
        .map(|(k, v)| (format!("g{k}"), *v))
        .collect();
    let p = Program::new("ties", gg, outs).unwrap();
    run_cpu(&p, &inputs)
        .iter()
        .map(|t| t.to_f64_vec())
        .collect()
}

#[test]
fn ties_split_like_pytorch() {
    let x = HostTensor::from_vec(vec![1.0f64, 2.0, 3.0], vec![3]).unwrap();
    let y = HostTensor::from_vec(vec![1.0f64, 1.0, 4.0], vec![3]).unwrap();
    let gm = exact_grads(vec![x.clone(), y.clone()], &|g, v| g.max(v[0], v[1]));
    assert_eq!(gm, vec![vec![0.5, 1.0, 0.0], vec![0.5, 0.0, 1.0]]);
    let gn = exact_grads(vec![x, y], &|g, v| g.min(v[0], v[1]));
    assert_eq!(gn, vec![vec![0.5, 0.0, 1.0], vec![0.5, 1.0, 0.0]]);
    // amax over a row with two maxima: each gets half.
    let r = HostTensor::from_vec(vec![3.0f64, 1.0, 3.0], vec![1, 3]).unwrap();
    let ga = exact_grads(vec![r], &|g, v| g.reduce_max(v[0], &[1]));
    assert_eq!(ga, vec![vec![0.5, 0.0, 0.5]]);
    // abs at 0 has gradient 0; x^2 at 0 has no NaN from the exponent's gradient.
    let z = HostTensor::from_vec(vec![-2.0f64, 0.0, 2.0], vec![3]).unwrap();
    let gabs = exact_grads(vec![z.clone()], &|g, v| g.abs(v[0]));
    assert_eq!(gabs, vec![vec![-1.0, 0.0, 1.0]]);
    let two = HostTensor::from_vec(vec![2.0f64; 3], vec![3]).unwrap();
    let gp = exact_grads(vec![z, two], &|g, v| g.pow(v[0], v[1]));
    assert_eq!(gp[0], vec![-4.0, 0.0, 4.0]);
    // d/dy x^y = x^y·ln x: 0 at x = 0 (masked), NaN at x < 0 — both as in PyTorch.
    assert!(gp[1][0].is_nan() && gp[1][1] == 0.0, "{gp:?}");
    assert!((gp[1][2] - 4.0 * 2f64.ln()).abs() < 1e-12, "{gp:?}");
}

// ------------------------------------------------------------------------ errors

#[test]
fn bad_requests_are_errors() {
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [3]).unwrap();
    let i = g.parameter("i", DType::I32, [3]).unwrap();
    let y = g.exp(x).unwrap();
    let e = grad(&g, y, &[x]).unwrap_err();
    assert!(e.to_string().contains("scalar"), "{e}");
    let l = g.reduce_sum(y, &[0]).unwrap();
    let e = grad(&g, l, &[i]).unwrap_err();
    assert!(e.to_string().contains("float"), "{e}");
    // A value the loss does not depend on gets zeros.
    let other = g.parameter("other", DType::F32, [2]).unwrap();
    let (gg, gr) = grad(&g, l, &[x, other]).unwrap();
    let p = Program::new("z", gg, vec![("g".into(), gr[0]), ("o".into(), gr[1])]).unwrap();
    let out = run_cpu(
        &p,
        &[
            HostTensor::from_vec(vec![0.0f32, 1.0, 2.0], vec![3]).unwrap(),
            i32s(&[0, 0, 0], &[3]),
            HostTensor::zeros(DType::F32, vec![2]),
        ],
    );
    assert_eq!(out[1].to_f64_vec(), vec![0.0, 0.0]);
    let ex: Vec<f64> = [0.0f64, 1.0, 2.0]
        .iter()
        .map(|v| (*v as f32).exp() as f64)
        .collect();
    assert_eq!(out[0].to_f64_vec(), ex);
}
