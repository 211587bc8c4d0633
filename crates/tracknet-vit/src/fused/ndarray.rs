//! [`FusedBackend`] for NdArray: the host [kernels](super::kernels) on contiguous f32 buffers
//! (`host::read` gathers a strided view once), the composed Burn ops for other element types.

use burn::backend::NdArray;
use burn::tensor::ops::{ActivationOps, FloatTensor, ModuleOps};

use super::{
    Act, FusedBackend, Grads3, OptGrads3, attention_kernel, attention_probs, composed,
    composed_attention_backward, float, host, kernels, prim,
};

impl FusedBackend for NdArray {
    fn matmul_convolutions() -> bool {
        true
    }

    fn parallel_shards() -> bool {
        true
    }

    fn host_kernels() -> bool {
        true
    }

    fn fused_adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: super::AdamWStep,
    ) -> [FloatTensor<Self>; 3] {
        if !host::all_f32(&[&p, &g, &m, &v]) {
            return super::adamw::composed::<Self>(p, g, m, v, step);
        }
        let [(dp, shape), (dg, _), (dm, _), (dv, _)] = host::read_all([&p, &g, &m, &v]);
        super::adamw::host(&dp, &dg, &dm, &dv, step).map(|x| host::write(x, &shape))
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (Some(vq), Some(vk), Some(vv)) = (host::view4(&q), host::view4(&k), host::view4(&v))
        else {
            let (q, k, v) = (float::<Self>(q), float::<Self>(k), float::<Self>(v));
            return prim(attention_probs(q, k).matmul(v));
        };
        let out = attention_kernel::forward(&vq, &vk, &vv);
        host::write_bthd(out, vq.shape)
    }

    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        need: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3] {
        let views = (
            host::view4(&q),
            host::view4(&k),
            host::view4(&v),
            host::view4(&grad),
        );
        let (Some(vq), Some(vk), Some(vv), Some(vg)) = views else {
            return composed_attention_backward::<Self>(q, k, v, grad, need);
        };
        let [dq, dk, dv] = attention_kernel::backward(&vq, &vk, &vv, &vg, need);
        [
            dq.map(|g| host::write_bthd(g, vq.shape)),
            dk.map(|g| host::write_bthd(g, vk.shape)),
            dv.map(|g| host::write_bthd(g, vv.shape)),
        ]
    }

    fn fused_bilinear_resize(x: FloatTensor<Self>, size: [usize; 2]) -> FloatTensor<Self> {
        let Some((data, shape)) = host::read(&x) else {
            return prim(crate::fused::bilinear::composed(float::<Self>(x), size));
        };
        let (ty, tx) = resize_taps([shape[2], shape[3]], size);
        let y = kernels::bilinear_forward(&data, (shape[2], shape[3]), &ty, &tx);
        host::write(y, &[shape[0], shape[1], size[0], size[1]])
    }

    fn fused_bilinear_resize_backward(
        grad: FloatTensor<Self>,
        in_hw: [usize; 2],
    ) -> FloatTensor<Self> {
        let Some((data, shape)) = host::read(&grad) else {
            return prim(crate::fused::bilinear::composed_backward(
                float::<Self>(grad),
                in_hw,
            ));
        };
        let (ty, tx) = resize_taps(in_hw, [shape[2], shape[3]]);
        let dx = kernels::bilinear_backward(&data, (in_hw[0], in_hw[1]), &ty, &tx);
        host::write(dx, &[shape[0], shape[1], in_hw[0], in_hw[1]])
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match host::read(&x) {
            Some((data, shape)) => host::write(kernels::gelu_forward(&data), &shape),
            None => Self::gelu(x),
        }
    }

    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        match (host::read(&x), host::read(&grad)) {
            (Some((x, shape)), Some((grad, _))) => {
                host::write(kernels::gelu_backward(&x, &grad), &shape)
            }
            _ => composed::gelu_backward::<Self>(x, grad),
        }
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        if !host::all_f32(&[&x, &gamma, &beta]) {
            return Self::layer_norm(x, gamma, Some(beta), eps);
        }
        let [(x, shape), (g, _), (b, _)] = host::read_all([&x, &gamma, &beta]);
        host::write(kernels::layer_norm_forward(&x, &g, Some(&b), eps), &shape)
    }

    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> Grads3<Self> {
        if !host::all_f32(&[&x, &gamma, &grad]) {
            return composed::layer_norm_backward::<Self>(x, gamma, grad, eps);
        }
        let [(xs, shape), (g, gs), (dy, _)] = host::read_all([&x, &gamma, &grad]);
        let (dx, dg, db) = kernels::layer_norm_backward(&xs, &g, &dy, eps);
        (
            host::write(dx, &shape),
            host::write(dg, &gs),
            host::write(db, &gs),
        )
    }

    fn fused_group_norm_act(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        act: Act,
    ) -> FloatTensor<Self> {
        if !host::all_f32(&[&x, &gamma, &beta]) {
            return composed::group_norm_act::<Self>(x, gamma, beta, groups, eps, act);
        }
        let [(xs, shape), (g, _), (b, _)] = host::read_all([&x, &gamma, &beta]);
        let gs = group_shape(&shape, groups);
        host::write(
            kernels::group_norm_act_forward(&xs, Some((&g, &b)), gs, eps, act),
            &shape,
        )
    }

    fn fused_group_norm_act_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        act: Act,
    ) -> Grads3<Self> {
        if !host::all_f32(&[&x, &gamma, &beta, &grad]) {
            return composed::group_norm_act_backward::<Self>(
                x, gamma, beta, grad, groups, eps, act,
            );
        }
        let [(xs, shape), (g, cs), (b, _), (dy, _)] = host::read_all([&x, &gamma, &beta, &grad]);
        let gs = group_shape(&shape, groups);
        let (dx, dg, db) = kernels::group_norm_act_backward(&xs, Some((&g, &b)), &dy, gs, eps, act);
        (
            host::write(dx, &shape),
            host::write(dg, &cs),
            host::write(db, &cs),
        )
    }

    fn fused_depthwise3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !host::all_f32(&[&x, &weight, &bias]) {
            return composed::depthwise3x3::<Self>(x, weight, bias);
        }
        let [(xs, shape), (w, _), (b, _)] = host::read_all([&x, &weight, &bias]);
        host::write(
            kernels::depthwise3x3_forward(&xs, &w, &b, plane_shape(&shape)),
            &shape,
        )
    }

    fn fused_depthwise3x3_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        need_dx: bool,
    ) -> OptGrads3<Self> {
        if !host::all_f32(&[&x, &weight, &grad]) {
            return composed::depthwise3x3_backward::<Self>(x, weight, grad, need_dx);
        }
        let [(xs, shape), (w, ws), (dy, _)] = host::read_all([&x, &weight, &grad]);
        let (dx, dw, db) =
            kernels::depthwise3x3_backward(&xs, &w, &dy, plane_shape(&shape), need_dx);
        (
            dx.map(|dx| host::write(dx, &shape)),
            host::write(dw, &ws),
            host::write(db, &[shape[1]]),
        )
    }

    fn fused_pointwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !host::all_f32(&[&x, &weight, &bias]) {
            return composed::pointwise::<Self>(x, weight, bias);
        }
        let [(xs, shape), (w, _), (b, _)] = host::read_all([&x, &weight, &bias]);
        let (c, hw) = (shape[1], shape[2] * shape[3]);
        let y = kernels::pointwise_forward(&xs, &w, &b, (c, hw));
        host::write(y, &[shape[0], b.len(), shape[2], shape[3]])
    }

    fn fused_pointwise_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        need_dx: bool,
    ) -> OptGrads3<Self> {
        if !host::all_f32(&[&x, &weight, &grad]) {
            return composed::pointwise_backward::<Self>(x, weight, grad, need_dx);
        }
        let [(xs, shape), (w, ws), (dy, _)] = host::read_all([&x, &weight, &grad]);
        let (c, o, hw) = (shape[1], ws[0], shape[2] * shape[3]);
        let (dx, dw, db) = kernels::pointwise_backward(&xs, &w, &dy, (c, o, hw), need_dx);
        (
            dx.map(|dx| host::write(dx, &shape)),
            host::write(dw, &ws),
            host::write(db, &[o]),
        )
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        transpose: bool,
    ) -> FloatTensor<Self> {
        let (Some(view), Some((c, _)), Some((s, _))) =
            (host::view4(&x), host::read(&cos), host::read(&sin))
        else {
            return composed::rope::<Self>(x, cos, sin, transpose);
        };
        let y = attention_kernel::rope(&view, &c, &s, transpose);
        host::write_bthd(y, view.shape)
    }
}

/// The taps of both axes for a resize `from` → `to` (`[height, width]`).
#[allow(clippy::type_complexity)]
fn resize_taps(
    from: [usize; 2],
    to: [usize; 2],
) -> (Vec<(usize, usize, f32)>, Vec<(usize, usize, f32)>) {
    use crate::fused::bilinear::source_taps;
    (source_taps(from[0], to[0]), source_taps(from[1], to[1]))
}

/// `[batch, channels, h, w]` (any trailing spatial axes) as the group-norm kernel's shape.
fn group_shape(shape: &[usize], groups: usize) -> kernels::GroupShape {
    kernels::GroupShape {
        batch: shape[0],
        channels: shape[1],
        spatial: shape[2..].iter().product(),
        groups,
    }
}

fn plane_shape(shape: &[usize]) -> kernels::PlaneShape {
    kernels::PlaneShape {
        batch: shape[0],
        channels: shape[1],
        h: shape[2],
        w: shape[3],
    }
}
