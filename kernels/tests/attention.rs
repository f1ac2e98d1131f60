//! The attention row kernel against an f64 reference of its definition (softmax over the kept
//! slots of scale·q·k + mask, times v), over a paged layout with grouped heads, soft-capping,
//! odd head sizes, f32/bf16/f16 caches, partly and wholly masked rows, at every ISA level this
//! CPU has (levels sum in different orders, as the dot kernels do: each is held to the
//! reference, not to the others' bits).

use half::{bf16, f16};
use silica_kernels::attention::{attend_at, KvData, KvLayout, RowSpec, MASK_SKIP};
use silica_kernels::isa::{isa, Level};

/// A cache dtype's name, keys, values and their values in f64.
type Cache<'a> = (&'static str, KvData<'a>, KvData<'a>, Vec<f64>, Vec<f64>);

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

#[allow(clippy::too_many_arguments)]
fn reference(q: &[f32], mask: &[f32], k: &[f64], v: &[f64], l: &KvLayout, s: &RowSpec) -> Vec<f64> {
    let grp = s.hq / s.hkv;
    let tk = mask.len();
    let kept: Vec<usize> = (0..tk).filter(|&j| mask[j] > MASK_SKIP).collect();
    let slots: Vec<usize> = if kept.is_empty() {
        (0..tk).collect()
    } else {
        kept
    };
    let mut out = vec![0f64; s.hq * s.dv];
    for h in 0..s.hq {
        let at = |j: usize| {
            l.block_base[j / l.block_size]
                + (j % l.block_size) * l.slot_stride
                + (h / grp) * l.head_stride
        };
        let sc: Vec<f64> = slots
            .iter()
            .map(|&j| {
                let dot: f64 = (0..s.d)
                    .map(|i| q[h * s.d + i] as f64 * k[at(j) * s.d + i])
                    .sum();
                let raw = dot * s.scale as f64;
                let capped = match s.softcap {
                    Some(c) => c as f64 * (raw / c as f64).tanh(),
                    None => raw,
                };
                capped + mask[j] as f64
            })
            .collect();
        let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (n, &j) in slots.iter().enumerate() {
            for i in 0..s.dv {
                out[h * s.dv + i] += e[n] / sum * v[at(j) * s.dv + i];
            }
        }
    }
    out
}

#[test]
fn attend_matches_the_definition_on_every_level() {
    let mut r = Lcg(7);
    // (hq, hkv, d, dv, block size, blocks, context, softcap)
    let cases = [
        (8, 4, 32, 32, 16, 5, 70, None),
        (6, 2, 20, 12, 4, 7, 25, Some(2.0)),
        (4, 4, 64, 64, 8, 3, 24, None),
        (2, 1, 3, 5, 2, 9, 17, None),
    ];
    let levels: Vec<Level> = isa().supported_levels();
    for (ci, &(hq, hkv, d, dv, bs, nb, ctx, cap)) in cases.iter().enumerate() {
        let pool_blocks = nb + 4;
        let kf: Vec<f32> = (0..pool_blocks * bs * hkv * d).map(|_| r.next()).collect();
        let vf: Vec<f32> = (0..pool_blocks * bs * hkv * dv).map(|_| r.next()).collect();
        // Blocks in a scrambled order; a paged layout.
        let bases: Vec<usize> = (0..nb)
            .map(|i| ((i * 3 + 1) % pool_blocks) * bs * hkv)
            .collect();
        let l = KvLayout {
            block_size: bs,
            slot_stride: hkv,
            head_stride: 1,
            block_base: &bases,
        };
        let spec = RowSpec {
            hq,
            hkv,
            d,
            dv,
            scale: 0.37,
            softcap: cap,
        };
        let q: Vec<f32> = (0..hq * d).map(|_| r.next()).collect();
        let tk = nb * bs;
        for masked in ["causal", "window", "none kept"] {
            let mask: Vec<f32> = (0..tk)
                .map(|j| {
                    let keep = match masked {
                        "causal" => j < ctx,
                        "window" => j < ctx && j + 9 >= ctx,
                        _ => false,
                    };
                    if keep {
                        -0.25 * (j % 3) as f32
                    } else if j % 2 == 0 {
                        f32::NEG_INFINITY
                    } else {
                        -1e30
                    }
                })
                .collect();
            let kb: Vec<bf16> = kf.iter().map(|&x| bf16::from_f32(x)).collect();
            let vb: Vec<bf16> = vf.iter().map(|&x| bf16::from_f32(x)).collect();
            let kh: Vec<f16> = kf.iter().map(|&x| f16::from_f32(x)).collect();
            let vh: Vec<f16> = vf.iter().map(|&x| f16::from_f32(x)).collect();
            let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            // 16-bit caches: the definition on their (exactly widened) values.
            let caches: [Cache; 3] = [
                (
                    "f32",
                    KvData::F32(&kf),
                    KvData::F32(&vf),
                    wide(&kf),
                    wide(&vf),
                ),
                (
                    "bf16",
                    KvData::BF16(&kb),
                    KvData::BF16(&vb),
                    kb.iter().map(|x| x.to_f64()).collect(),
                    vb.iter().map(|x| x.to_f64()).collect(),
                ),
                (
                    "f16",
                    KvData::F16(&kh),
                    KvData::F16(&vh),
                    kh.iter().map(|x| x.to_f64()).collect(),
                    vh.iter().map(|x| x.to_f64()).collect(),
                ),
            ];
            for (name, kd, vd, k64, v64) in caches {
                let want = reference(&q, &mask, &k64, &v64, &l, &spec);
                for &lv in &levels {
                    let mut got = vec![7f32; hq * dv];
                    attend_at(lv, &q, &mask, kd, vd, &l, &spec, &mut got);
                    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g as f64 - w).abs() <= 2e-6 * (1.0 + w.abs()),
                            "case {ci} {masked} {name} {} [{i}]: {g} vs {w}",
                            lv.name()
                        );
                    }
                }
            }
        }
    }
}
