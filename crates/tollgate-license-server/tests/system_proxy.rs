//! The client honours `HTTPS_PROXY` / `NO_PROXY` from the environment, and an explicit proxy
//! wins over it. Alone in its test binary: the environment is set once, before any thread
//! that could read it exists.

mod support;

use support::{ConnectProxy, Harness};

#[test]
fn https_proxy_and_no_proxy_from_the_environment_and_an_explicit_proxy_wins() {
    let env_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let env_proxy_url = format!("http://{}", env_listener.local_addr().unwrap());
    // SAFETY: no other thread of this process reads the environment at this point (this is
    // the binary's only test, and the runtime is built below).
    unsafe {
        for name in ["https_proxy", "ALL_PROXY", "all_proxy", "no_proxy"] {
            std::env::remove_var(name);
        }
        std::env::set_var("HTTPS_PROXY", &env_proxy_url);
        std::env::set_var("NO_PROXY", "localhost");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let env_proxy = ConnectProxy::from_std(env_listener, None, false);
        let h = Harness::start();
        h.create_license("perpetual", None);
        let (_, token) = h.issue_token(&["127.0.0.1"]);

        // HTTPS_PROXY applies.
        let mut config = h.client_config(&token);
        config.system_proxy = true;
        tollgate_license_client::LicenseClient::new(config.clone())
            .unwrap()
            .fetch_lease()
            .await
            .unwrap();
        assert_eq!(env_proxy.count(), 1, "went through HTTPS_PROXY");

        // An explicit proxy wins over the environment.
        let explicit = ConnectProxy::start(None, false).await;
        let mut with_explicit = config.clone();
        with_explicit.proxy = Some(explicit.url());
        tollgate_license_client::LicenseClient::new(with_explicit)
            .unwrap()
            .fetch_lease()
            .await
            .unwrap();
        assert_eq!((explicit.count(), env_proxy.count()), (1, 1));

        // NO_PROXY=localhost: the same server by that name goes direct.
        let mut direct = config.clone();
        direct.server_url = format!("https://localhost:{}", h.addr().port())
            .parse()
            .unwrap();
        tollgate_license_client::LicenseClient::new(direct)
            .unwrap()
            .fetch_lease()
            .await
            .unwrap();
        assert_eq!(env_proxy.count(), 1, "NO_PROXY bypassed the proxy");

        // system_proxy = false ignores the environment.
        let mut ignore = config.clone();
        ignore.system_proxy = false;
        tollgate_license_client::LicenseClient::new(ignore)
            .unwrap()
            .fetch_lease()
            .await
            .unwrap();
        assert_eq!(env_proxy.count(), 1);

        // The environment's proxy is down: the failure is blamed on the proxy.
        drop(env_proxy);
        let error = tollgate_license_client::LicenseClient::new(config)
            .unwrap()
            .fetch_lease()
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "proxy", "{error}");
    });
}
