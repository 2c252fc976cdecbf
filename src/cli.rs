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
    /// Manage virtual keys through a running gateway's admin API
    Keys(KeysArgs),
    /// Manage tenants' limits and budgets through a running gateway's admin API
    Tenants(TenantsArgs),
    /// Usage and cost from the ledger, per day, tenant, key or model
    Usage(UsageArgs),
}

/// `llmedge usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    #[arg(long)]
    pub tenant: Option<String>,
    /// A key id (`key_…`)
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    /// How far back: `7d`, `12h`, `30m` (default: since the first of this UTC month)
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 start (instead of --since)
    #[arg(long, conflicts_with = "since")]
    pub from: Option<String>,
    /// RFC 3339 end (default: now)
    #[arg(long)]
    pub to: Option<String>,
    /// Group by: day, tenant, key, model (comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub by: Vec<String>,
    /// Print CSV (the server's)
    #[arg(long)]
    pub csv: bool,
    #[command(flatten)]
    pub conn: AdminConn,
}

/// How the CLI reaches the admin API; the admin key comes from `LLMEDGE_ADMIN_KEY`.
#[derive(Debug, Args, Clone)]
pub struct AdminConn {
    /// Admin listener URL (default: `server.admin_listen` of --config)
    #[arg(long, global = true, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Print the server's JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    #[command(flatten)]
    pub conn: AdminConn,
}

/// Limits and budget flags, shared by keys and tenants.
#[derive(Debug, Args, Clone, Default)]
pub struct RuleFlags {
    /// Requests per minute
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per minute
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Requests in flight at once
    #[arg(long)]
    pub concurrency: Option<u64>,
    /// Budget per UTC day, in USD
    #[arg(long)]
    pub usd_per_day: Option<f64>,
    /// Budget per UTC month, in USD
    #[arg(long)]
    pub usd_per_month: Option<f64>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed this once
    Create(CreateKey),
    /// List keys (never their secrets)
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// active, revoked or expired
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one key
    Show { id: String },
    /// Change a key's name, models, pools, limits, budget or expiry (limits given are merged)
    Update(UpdateKey),
    /// Revoke a key (401 on every gateway within a second)
    Revoke { id: String },
    /// Give a key a new secret; the old one keeps working for --grace seconds
    Rotate {
        id: String,
        #[arg(long, default_value_t = 0)]
        grace: u64,
    },
}

/// `llmedge keys create`.
#[derive(Debug, Args)]
pub struct CreateKey {
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub user: Option<String>,
    #[command(flatten)]
    pub access: KeyAccess,
    #[command(flatten)]
    pub rules: RuleFlags,
}

/// `llmedge keys update`.
#[derive(Debug, Args)]
pub struct UpdateKey {
    pub id: String,
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub access: KeyAccess,
    #[command(flatten)]
    pub rules: RuleFlags,
}

/// What a key may use, and until when.
#[derive(Debug, Args, Clone, Default)]
pub struct KeyAccess {
    /// Model globs the key may use (comma-separated; default: every model)
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Pools the key may pin (comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub pools: Option<Vec<String>>,
    /// RFC 3339 time the key stops working
    #[arg(long)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    pub command: TenantsCommand,
    #[command(flatten)]
    pub conn: AdminConn,
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Set a tenant's limits and budget (the flags given; others stay)
    Set {
        name: String,
        #[command(flatten)]
        rules: RuleFlags,
    },
    /// List tenants (the config file's and the store's)
    List,
    /// Show one tenant
    Show { name: String },
    /// Delete a store tenant that has no live keys
    Delete { name: String },
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
    /// Prefix-cache capacity in 64-character blocks; prompts then pay prefill time for what
    /// is not cached (0 = no cache model)
    #[arg(long, default_value_t = 0)]
    pub cache_blocks: usize,
    /// Prefill milliseconds per 1,000 uncached prompt characters (with --cache-blocks)
    #[arg(long, default_value_t = 5.0)]
    pub prefill_ms_per_kchar: f64,
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
