//! `sluice listen`: a local webhook receiver for trying Sluice out. It prints every POST it
//! gets (headers and body) and, given the subscription's secret, verifies the Standard
//! Webhooks signature the way a receiver should.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use sluice_core::signing::{SigningSecret, verify};

/// Flags of `sluice listen`.
#[derive(Debug, clap::Args, Clone)]
pub struct ListenArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// The subscription's signing secret (`whsec_...`), to verify signatures.
    #[arg(long, env = "SLUICE_LISTEN_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Answer with this HTTP status (to try retries: 500; to try auto-disable: 410).
    #[arg(long, default_value_t = 200)]
    pub status: u16,
}

struct Listener {
    secret: Option<SigningSecret>,
    status: StatusCode,
}

/// Runs the receiver until Ctrl-C or SIGTERM.
pub async fn run(args: ListenArgs) -> anyhow::Result<()> {
    let secret = match &args.secret {
        Some(s) => Some(SigningSecret::parse(s).map_err(|e| anyhow::anyhow!("--secret: {e}"))?),
        None => None,
    };
    let status = StatusCode::from_u16(args.status)
        .map_err(|_| anyhow::anyhow!("--status: not an HTTP status"))?;
    let state = std::sync::Arc::new(Listener { secret, status });
    let app = Router::new()
        .route("/{*path}", post(receive))
        .route("/", post(receive))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "listening for webhooks on http://{}/ (answering {})",
        args.listen, args.status
    );
    let shutdown = crate::shutdown::on_signal();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

async fn receive(
    State(state): State<std::sync::Arc<Listener>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    println!(
        "--- POST webhook-id={} event received",
        header("webhook-id")
    );
    for (name, value) in &headers {
        println!("{name}: {}", value.to_str().unwrap_or("<binary>"));
    }
    println!("\n{}\n", String::from_utf8_lossy(&body));
    if let Some(secret) = &state.secret {
        let now = chrono::Utc::now().timestamp();
        match verify(
            secret,
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
            &body,
            now,
            300,
        ) {
            Ok(()) => println!("signature: VALID"),
            Err(e) => {
                println!("signature: INVALID ({e})");
                return StatusCode::UNAUTHORIZED;
            }
        }
    }
    state.status
}
