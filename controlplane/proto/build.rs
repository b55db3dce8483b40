//! Compiles `proto/carmine/v1/carmine.proto` with protox (pure Rust, no `protoc`) and feeds the
//! descriptor set to tonic-prost-build for the message types, clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/carmine/v1/carmine.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
