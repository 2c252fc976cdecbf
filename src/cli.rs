//! Command-line interface (argument structs only).

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "llmedge",
    version,
    about = "OpenAI-compatible LLM gateway on Pingora"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Path of the YAML config (runs the gateway)
    #[arg(short = 'c', long, value_name = "PATH", global = true)]
    pub config: Option<String>,
    /// Validate the config, print "ok" and exit 0, or print the bad field and exit 64
    #[arg(short = 't', long)]
    pub test: bool,
    /// Reload the config whenever the file changes (SIGHUP always reloads it)
    #[arg(long)]
    pub watch: bool,
    /// Take the listening sockets over from a running llmedge, then send it SIGQUIT
    #[arg(long)]
    pub upgrade: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a built-in OpenAI-compatible fake upstream
    Mock(MockArgs),
    /// Start the gateway in front of an in-process mock, with a demo key and curl lines
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct MockArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Tokens per completion (a request's max_tokens caps it)
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
    /// Delay between streamed tokens, in milliseconds
    #[arg(long, default_value_t = 20)]
    pub delay_ms: u64,
    /// Model ids listed by /v1/models, comma-separated
    #[arg(long, default_value = "llama3,mock-embed", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Concurrent generations, like a GPU server's batch limit; the rest queue (0 = unlimited)
    #[arg(long, default_value_t = 0)]
    pub slots: usize,
    /// Worker threads
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Gateway address
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Admin (metrics) address
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
}
