//! Image write throughput: the agent's path (HTTP on 127.0.0.1 → sha256 → write, first MiB last)
//! against `dd` copying the same image to the same kind of target, in one run.
//!
//! `cargo bench -p ferric-agent --bench write_throughput` (FERRIC_BENCH_MIB sets the image size,
//! default 1024; FERRIC_BENCH_DIR the directory for the image and targets, default the system temp dir).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use ferric_agent::deploy::{write_image_task, Disk};
use ferric_agent::progress::ProgressTracker;
use ferric_protocol::ImageInfo;
use sha2::{Digest, Sha256};

fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::var("FERRIC_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let dir =
        tempfile::tempdir_in(std::env::var_os("FERRIC_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()))?;
    let image = dir.path().join("image.raw");
    let checksum = make_image(&image, mib)?;
    let target_bytes = (mib + 16) << 20;

    let dd_target = sized_file(&dir.path().join("dd.target"), target_bytes)?;
    drop_caches();
    let started = Instant::now();
    ferric_runner::run(
        "dd the image onto the target",
        Command::new("dd").arg(format!("if={}", image.display())).arg(format!("of={}", dd_target.display())).args([
            "bs=4M",
            "conv=notrunc,fsync",
            "status=none",
        ]),
    )?;
    let dd_seconds = started.elapsed().as_secs_f64();

    let agent_target = sized_file(&dir.path().join("agent.target"), target_bytes)?;
    drop_caches();
    let runtime = tokio::runtime::Runtime::new()?;
    let agent_seconds = runtime.block_on(async {
        let url = serve(&image).await?;
        let info = ImageInfo { id: "bench".into(), urls: vec![url], checksum: Some(checksum), ..Default::default() };
        let started = Instant::now();
        write_image_task(
            &reqwest::Client::new(),
            &info,
            &Disk::Fixed(agent_target),
            Arc::new(ProgressTracker::default()),
        )
        .await?;
        anyhow::Ok(started.elapsed().as_secs_f64())
    })?;

    let rate = |seconds: f64| mib as f64 / seconds;
    println!("image: {mib} MiB raw, target: file in {}", dir.path().display());
    println!("{:<40} {:>8.2} s {:>9.1} MiB/s", "dd bs=4M conv=fsync (baseline)", dd_seconds, rate(dd_seconds));
    println!(
        "{:<40} {:>8.2} s {:>9.1} MiB/s",
        "agent: HTTP + sha256 + write + fsync",
        agent_seconds,
        rate(agent_seconds)
    );
    println!("ratio agent/dd throughput: {:.2}", dd_seconds / agent_seconds);
    Ok(())
}

/// Writes `mib` MiB of incompressible-looking data and returns its sha256.
fn make_image(path: &Path, mib: u64) -> anyhow::Result<String> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        hasher.update(&block);
        file.write_all(&block)?;
    }
    file.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

fn sized_file(path: &Path, bytes: u64) -> anyhow::Result<std::path::PathBuf> {
    std::fs::File::create(path)?.set_len(bytes)?;
    Ok(path.to_owned())
}

/// Both runs read the image from the page cache after the first: drop it so neither gets it for free.
fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Serves the image file over HTTP on 127.0.0.1, streamed from disk.
async fn serve(image: &Path) -> anyhow::Result<String> {
    let app = axum::Router::new().fallback_service(tower_http::services::ServeFile::new(image));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/image.raw"))
}
