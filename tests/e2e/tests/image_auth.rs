//! Pulls with credentials from the CRI AuthConfig: basic auth against an htpasswd registry
//! (username/password and docker's `auth` field) and the bearer-token flow through the token
//! proxy (username/password, identity token, registry token). Wrong credentials are refused
//! with Unauthenticated or PermissionDenied.

use anyhow::Result;
use e2e::cri_api::AuthConfig;
use e2e::{
    Berthd, BerthdOptions, Code, Credentials, Proxy, ProxyOptions, Registry, RegistryEntry, Status,
    TokenAuth, auth_userpass, fixtures,
};

const DENIED: &[Code] = &[Code::Unauthenticated, Code::PermissionDenied];

fn assert_denied(r: Result<String, Status>, what: &str) {
    match r {
        Ok(id) => panic!("{what}: expected Unauthenticated/PermissionDenied, got OK ({id})"),
        Err(s) => assert!(DENIED.contains(&s.code()), "{what}: got {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_registry_basic_auth() -> Result<()> {
    let reg = Registry::start_with_htpasswd("alice", "s3cret").await?;
    let img = fixtures::oci(&reg.pusher(), "private/busybox", "v1").await?;
    let berthd = Berthd::start(
        BerthdOptions::default().entry(RegistryEntry::mapped(&reg.addr(), &reg.addr())),
    )
    .await?;
    let cri = berthd.cri().await?;
    let r = img.tag_ref(&reg.addr());

    assert_denied(cri.pull(&r).await, "no credentials");
    assert_denied(
        cri.pull_with(&r, Some(auth_userpass("alice", "wrong")))
            .await,
        "wrong password",
    );
    assert_denied(
        cri.pull_with(&r, Some(auth_userpass("mallory", "s3cret")))
            .await,
        "wrong user",
    );
    let wrong_b64 = AuthConfig {
        auth: Credentials::new("alice", "nope").auth_b64(),
        ..Default::default()
    };
    assert_denied(cri.pull_with(&r, Some(wrong_b64)).await, "wrong auth field");
    assert!(cri.list_images().await?.is_empty());

    assert_eq!(
        cri.pull_with(&r, Some(auth_userpass("alice", "s3cret")))
            .await?,
        img.id(),
        "username/password"
    );
    cri.remove_image(img.id()).await?;
    let b64 = AuthConfig {
        auth: Credentials::new("alice", "s3cret").auth_b64(),
        server_address: reg.addr(),
        ..Default::default()
    };
    assert_eq!(cri.pull_with(&r, Some(b64)).await?, img.id(), "auth field");
    let rec = cri.image_status(&r).await?.expect("pulled with auth");
    assert!(rec.repo_tags.contains(&r), "{:?}", rec.repo_tags);
    Ok(())
}

/// A registry with one image per scenario behind the token proxy, and berthd mapping the
/// proxy's address.
async fn token_setup() -> Result<(Registry, Proxy, Berthd, Vec<e2e::PushedImage>)> {
    let reg = Registry::start().await?;
    let p = reg.pusher();
    let mut images = Vec::new();
    for (i, repo) in [
        "auth/userpass",
        "auth/identity",
        "auth/regtoken",
        "auth/denied",
    ]
    .iter()
    .enumerate()
    {
        images.push(
            fixtures::busybox(&p, repo, &["v1"], e2e::Format::Oci, &format!("token-{i}")).await?,
        );
    }
    let proxy = Proxy::start(
        &reg.url(),
        ProxyOptions {
            token_auth: Some(TokenAuth::test_default()),
            throttle_bytes_per_sec: None,
        },
    )
    .await?;
    let berthd = Berthd::start(
        BerthdOptions::default().entry(RegistryEntry::mapped(&proxy.addr(), &proxy.addr())),
    )
    .await?;
    Ok((reg, proxy, berthd, images))
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_flow_refuses_wrong_credentials() -> Result<()> {
    let (_reg, proxy, berthd, images) = token_setup().await?;
    let auth = TokenAuth::test_default();
    let cri = berthd.cri().await?;
    let r = images[3].tag_ref(&proxy.addr());

    assert_denied(cri.pull(&r).await, "no credentials");
    assert_denied(
        cri.pull_with(&r, Some(auth_userpass(&auth.credentials.username, "wrong")))
            .await,
        "wrong password",
    );
    let bad_identity = AuthConfig {
        identity_token: "not-the-identity-token".into(),
        ..Default::default()
    };
    assert_denied(
        cri.pull_with(&r, Some(bad_identity)).await,
        "wrong identity token",
    );
    let bad_registry_token = AuthConfig {
        registry_token: "not-the-registry-token".into(),
        ..Default::default()
    };
    assert_denied(
        cri.pull_with(&r, Some(bad_registry_token)).await,
        "wrong registry token",
    );
    assert!(cri.list_images().await?.is_empty());
    // No manifest or blob was ever served.
    assert!(
        proxy.requests().iter().all(|q| !(q.status == 200
            && (q.path.contains("/manifests/") || q.path.contains("/blobs/")))),
        "{:?}",
        proxy.counts()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_flow_with_username_password() -> Result<()> {
    let (_reg, proxy, berthd, images) = token_setup().await?;
    let auth = TokenAuth::test_default();
    let cri = berthd.cri().await?;
    let img = &images[0];
    let r = img.tag_ref(&proxy.addr());
    let creds = auth_userpass(&auth.credentials.username, &auth.credentials.password);
    assert_eq!(cri.pull_with(&r, Some(creds)).await?, img.id());
    // berth went through the token endpoint (GET with basic auth or POST password grant).
    let tokens = proxy.token_requests();
    assert!(
        tokens.iter().any(|t| t.status == 200),
        "a token was issued: {tokens:?}"
    );
    let rec = cri.image_status(&r).await?.expect("pulled");
    assert_eq!(rec.id, img.config_digest);
    assert!(rec.repo_digests.contains(&img.digest_ref(&proxy.addr())));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_flow_with_identity_token() -> Result<()> {
    let (_reg, proxy, berthd, images) = token_setup().await?;
    let auth = TokenAuth::test_default();
    let cri = berthd.cri().await?;
    let img = &images[1];
    let r = img.tag_ref(&proxy.addr());
    let identity = AuthConfig {
        identity_token: auth.identity_token.clone(),
        ..Default::default()
    };
    assert_eq!(cri.pull_with(&r, Some(identity)).await?, img.id());
    let tokens = proxy.token_requests();
    assert!(
        tokens.iter().any(|t| t.method == "POST"
            && t.status == 200
            && t.form.contains("grant_type=refresh_token")
            && t.form.contains(&auth.identity_token)),
        "the identity token was exchanged as a refresh token: {tokens:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_flow_with_registry_token() -> Result<()> {
    let (_reg, proxy, berthd, images) = token_setup().await?;
    let auth = TokenAuth::test_default();
    let cri = berthd.cri().await?;
    let img = &images[2];
    let r = img.tag_ref(&proxy.addr());
    let token = AuthConfig {
        registry_token: auth.registry_token.clone(),
        ..Default::default()
    };
    assert_eq!(cri.pull_with(&r, Some(token)).await?, img.id());
    let bearer = format!("Bearer {}", auth.registry_token);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|q| q.path.contains("/blobs/")
                && q.authorization.as_deref() == Some(bearer.as_str())),
        "blobs fetched with the registry token: {:?}",
        proxy.requests()
    );
    Ok(())
}
