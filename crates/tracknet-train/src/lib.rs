//! tracknet-train
