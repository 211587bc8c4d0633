//! Times one forward + backward of the decoder + head or of the backbone alone (NdArray), to
//! see where a training step's time and memory go. Run under `/usr/bin/time -f %M` for the
//! process's peak memory.
//!
//! `cargo run --example prof -p tracknet-vit -- [quick|full] [dec|bb] [layers]`
//! * `quick`: the quick-start's sizes (96-wide, patch 8, 128×72 input, batch 8);
//! * `full`: DINOv3 ViT-S/16 at 512×288, decoder `[384, 256, 128, 64]`, batch 2.
use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::Instant;
use tracknet_vit::decoder::HeatmapDecoderConfig;
use tracknet_vit::head::HeatmapHeadConfig;
type A = Autodiff<NdArray>;

/// One size preset.
struct Preset {
    batch: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    mlp: usize,
    patch: usize,
    image: [usize; 2],
    decoder: Vec<usize>,
    heatmap: [usize; 2],
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or(default.into());
    let p = match arg(0, "quick").as_str() {
        "full" => Preset {
            batch: 2,
            hidden: 384,
            layers: 12,
            heads: 6,
            mlp: 1536,
            patch: 16,
            image: [288, 512],
            decoder: vec![384, 256, 128, 64],
            heatmap: [256, 144],
        },
        _ => Preset {
            batch: 8,
            hidden: 96,
            layers: 4,
            heads: 3,
            mlp: 384,
            patch: 8,
            image: [72, 128],
            decoder: vec![96, 48, 24],
            heatmap: [64, 36],
        },
    };
    let layers: usize = arg(2, &p.layers.to_string()).parse().expect("layers");
    let part = arg(1, "both");
    let d = Default::default();
    let grid = [p.image[0] / p.patch, p.image[1] / p.patch];
    if part != "bb" {
        let ups = vec![2; p.decoder.len() - 1];
        let last = *p.decoder.last().expect("channels");
        let dec = HeatmapDecoderConfig::new(p.decoder.clone(), ups, p.heatmap)
            .init::<A>(&d)
            .expect("decoder");
        let head = HeatmapHeadConfig::new(last).init::<A>(&d);
        let shape = [p.batch, p.hidden, grid[0], grid[1]];
        let x = Tensor::<A, 4>::random(shape, Distribution::Normal(0., 1.), &d).require_grad();
        let t = Instant::now();
        let l = head.forward(dec.forward(x)).sum();
        let t1 = t.elapsed();
        let _g = l.backward();
        println!("decoder fwd {:?} total {:?}", t1, t.elapsed());
    }
    if part != "dec" {
        let cfg = format!(
            r#"{{"model_type":"dinov3_vit","hidden_size":{},"num_hidden_layers":{layers},"num_attention_heads":{},"intermediate_size":{},"num_register_tokens":4,"patch_size":{}}}"#,
            p.hidden, p.heads, p.mlp, p.patch
        );
        let arch = tracknet_vit::backbone::BackboneArch::from_config_str(&cfg, "x".as_ref())
            .expect("config");
        let bb = tracknet_vit::backbone::Backbone::<A>::random(&arch, &d).expect("backbone");
        let shape = [p.batch, 3, p.image[0], p.image[1]];
        let x = Tensor::<A, 4>::random(shape, Distribution::Normal(0., 1.), &d).require_grad();
        let t = Instant::now();
        let l = bb.forward(x).patch_grid.sum();
        let t1 = t.elapsed();
        let _g = l.backward();
        println!(
            "backbone ({layers} layers) fwd {:?} total {:?}",
            t1,
            t.elapsed()
        );
    }
}
