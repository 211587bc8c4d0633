//! Times one forward + backward of the quick-start decoder and backbone (NdArray).
use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::Instant;
use tracknet_vit::decoder::HeatmapDecoderConfig;
use tracknet_vit::head::HeatmapHeadConfig;
type A = Autodiff<NdArray>;
fn main() {
    let d = Default::default();
    let dec = HeatmapDecoderConfig::new(vec![96, 48, 24], vec![2, 2], [64, 36])
        .init::<A>(&d)
        .unwrap();
    let head = HeatmapHeadConfig::new(24).init::<A>(&d);
    for _ in 0..3 {
        let x =
            Tensor::<A, 4>::random([8, 96, 9, 16], Distribution::Normal(0., 1.), &d).require_grad();
        let t = Instant::now();
        let l = head.forward(dec.forward(x.clone())).sum();
        let t1 = t.elapsed();
        let _g = l.backward();
        println!("decoder fwd {:?} total {:?}", t1, t.elapsed());
    }
    let cfg = r#"{"model_type":"dinov3_vit","hidden_size":96,"num_hidden_layers":4,"num_attention_heads":3,"intermediate_size":384,"num_register_tokens":4,"patch_size":8}"#;
    let arch =
        tracknet_vit::backbone::BackboneArch::from_config_str(cfg, std::path::Path::new("x"))
            .unwrap();
    let bb = tracknet_vit::backbone::Backbone::<A>::random(&arch, &d).unwrap();
    for _ in 0..3 {
        let x = Tensor::<A, 4>::random([8, 3, 72, 128], Distribution::Normal(0., 1.), &d)
            .require_grad();
        let t = Instant::now();
        let l = bb.forward(x).patch_grid.sum();
        let t1 = t.elapsed();
        let _g = l.backward();
        println!("backbone fwd {:?} total {:?}", t1, t.elapsed());
    }
}
