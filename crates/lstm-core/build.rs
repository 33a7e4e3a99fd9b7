//! Flags targets whose cores always have the Armv7E-M DSP extension (Cortex-M4/M7/M33 with
//! DSP), for the SMLAD/UXTB16 int8 kernels. `target_feature = "dsp"` is not visible to `cfg` on
//! stable Rust, so the target name decides.
fn main() {
    println!("cargo:rustc-check-cfg=cfg(arm_dsp)");
    println!("cargo:rerun-if-env-changed=TARGET");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("thumbv7em") || target.starts_with("thumbv8m.main") {
        println!("cargo:rustc-cfg=arm_dsp");
    }
}
