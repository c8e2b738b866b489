use clap::Parser;
use insights_remote::settings::{
    normalize_args, Cli, Command, GenerateTokenArgs, KeyArgs, RunArgs,
};
use insights_remote::token::Claims;
use insights_remote::{Error, Result};

fn main() -> std::process::ExitCode {
    insights_remote::server::tune_allocator();
    let cli = Cli::parse_from(normalize_args(std::env::args()));
    let outcome = match cli.command {
        Some(Command::Crd) => print_crd(),
        Some(Command::GenerateToken(args)) => generate_token(&args),
        Some(Command::Run(args)) => run(*args),
        None => run(cli.run),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("insights-remote: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print_crd() -> Result<()> {
    print!("{}", insights_remote::crd::crd_yaml());
    Ok(())
}

fn generate_token(args: &GenerateTokenArgs) -> Result<()> {
    print_token(
        &args.key,
        Claims {
            namespace: args.namespace.clone(),
            environment_id: args.environment_id.clone(),
            project_name: args.project_name.clone(),
            environment_name: args.environment_name.clone(),
        },
    )
}

fn print_token(key: &KeyArgs, claims: Claims) -> Result<()> {
    let ring = insights_remote::token::KeyRing::from_args(key)?;
    let token = ring
        .mint(&claims)
        .map_err(|e| Error::Config(e.to_string()))?;
    println!("{token}");
    Ok(())
}

fn init_tracing(args: &RunArgs) {
    insights_remote::logging::init(args.log_format(), &args.log_level());
}

fn run(args: RunArgs) -> Result<()> {
    if args.generate_token_only {
        return print_token(
            &args.key,
            Claims {
                namespace: args.generate_token_only_namespace.clone(),
                environment_id: args.generate_token_only_environment_id.clone(),
                project_name: args.generate_token_only_project_name.clone(),
                environment_name: args.generate_token_only_environment_name.clone(),
            },
        );
    }
    init_tracing(&args);
    // kube brings rustls with ring, lapin with aws-lc-rs available: choose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(insights_remote::run::run(args))
}
