//! The B2 emulator over real HTTP on loopback.

use std::time::{Duration, Instant};

use b2fs_tests::emulator::{
    Emulator, Fault, FaultConfig, LatencyConfig, encode_file_name, name_seed, virtual_bytes,
};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn authorize_version(c: &Client, emu: &Emulator, version: &str) -> reqwest::Result<Response> {
    c.get(format!(
        "{}/b2api/{version}/b2_authorize_account",
        emu.endpoint()
    ))
    .basic_auth(emu.key_id(), Some(emu.application_key()))
    .send()
    .await
}

async fn token(c: &Client, emu: &Emulator) -> String {
    let body: Value = authorize_version(c, emu, "v4")
        .await
        .expect("authorize")
        .json()
        .await
        .expect("authorize json");
    body["authorizationToken"]
        .as_str()
        .expect("token")
        .to_string()
}

fn by_name_url(emu: &Emulator, name: &str) -> String {
    format!(
        "{}/file/{}/{}",
        emu.endpoint(),
        emu.bucket_name(),
        encode_file_name(name)
    )
}

async fn get(c: &Client, url: &str, token: &str, range: Option<&str>) -> Response {
    let mut req = c.get(url).header("Authorization", token);
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    req.send().await.expect("send")
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn b2_error(r: Response) -> (StatusCode, String) {
    let status = r.status();
    let body: Value = r.json().await.expect("error json");
    assert_eq!(body["status"].as_u64(), Some(u64::from(status.as_u16())));
    assert!(body["message"].is_string());
    (status, body["code"].as_str().unwrap_or("").to_string())
}

async fn list_page(
    c: &Client,
    emu: &Emulator,
    token: &str,
    params: Value,
) -> Result<Value, (StatusCode, String)> {
    let r = c
        .post(format!("{}/b2api/v4/b2_list_file_names", emu.endpoint()))
        .header("Authorization", token)
        .json(&params)
        .send()
        .await
        .expect("send");
    if r.status().is_success() {
        Ok(r.json().await.expect("json"))
    } else {
        Err(b2_error(r).await)
    }
}

fn names(page: &Value) -> Vec<String> {
    page["files"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| f["fileName"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn authorize_shapes_and_bad_credentials() -> TestResult {
    let emu = Emulator::builder()
        .bucket("plots")
        .credentials("keyid", "secret")
        .start()
        .await?;
    let c = client();
    let ep = emu.endpoint();

    let v4: Value = authorize_version(&c, &emu, "v4").await?.json().await?;
    let s = &v4["apiInfo"]["storageApi"];
    assert_eq!(v4["accountId"], emu.account_id());
    assert!(
        v4["authorizationToken"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert_eq!(s["apiUrl"], ep);
    assert_eq!(s["downloadUrl"], ep);
    assert!(s["s3ApiUrl"].is_string());
    assert!(s["recommendedPartSize"].is_u64());
    assert!(s["absoluteMinimumPartSize"].is_u64());
    assert_eq!(
        s["allowed"]["buckets"],
        json!([{"id": emu.bucket_id(), "name": "plots"}])
    );
    assert!(s["allowed"]["namePrefix"].is_null());
    let caps = s["allowed"]["capabilities"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(caps.contains(&json!("listFiles")) && caps.contains(&json!("readFiles")));

    let v3: Value = authorize_version(&c, &emu, "v3").await?.json().await?;
    let s = &v3["apiInfo"]["storageApi"];
    assert_eq!(s["bucketId"], emu.bucket_id());
    assert_eq!(s["bucketName"], "plots");
    assert_eq!(s["apiUrl"], ep);

    let v2: Value = authorize_version(&c, &emu, "v2").await?.json().await?;
    assert_eq!(v2["apiUrl"], ep);
    assert_eq!(v2["downloadUrl"], ep);
    assert!(v2["s3ApiUrl"].is_string());
    assert!(v2["recommendedPartSize"].is_u64());
    assert!(v2["absoluteMinimumPartSize"].is_u64());
    assert_eq!(v2["allowed"]["bucketId"], emu.bucket_id());
    assert_eq!(v2["allowed"]["bucketName"], "plots");
    assert!(v2["allowed"]["capabilities"].is_array());
    assert!(v2["allowed"].get("namePrefix").is_some());

    // Tokens of every shape work on every version path.
    let t2 = v2["authorizationToken"].as_str().unwrap_or_default();
    let r = c
        .get(format!(
            "{ep}/b2api/v2/b2_list_file_names?bucketId={}",
            emu.bucket_id()
        ))
        .header("Authorization", t2)
        .send()
        .await?;
    assert_eq!(r.status(), 200);

    let bad = c
        .get(format!("{ep}/b2api/v4/b2_authorize_account"))
        .basic_auth("keyid", Some("wrong"))
        .send()
        .await?;
    assert_eq!(
        b2_error(bad).await,
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let none = c
        .get(format!("{ep}/b2api/v4/b2_authorize_account"))
        .send()
        .await?;
    assert_eq!(none.status(), 401);
    let unknown = c
        .get(format!("{ep}/b2api/v9/b2_authorize_account"))
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);

    let stats = emu.stats();
    assert_eq!(stats.requests.authorize, 5);
    assert_eq!(stats.requests.list_file_names, 1);
    assert_eq!(stats.requests.other, 1);
    assert_eq!(stats.responses_by_status.get(&401), Some(&2));
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unrestricted_key_name_prefix_and_list_buckets() -> TestResult {
    let emu = Emulator::builder()
        .unrestricted_key(true)
        .name_prefix("plots/")
        .virtual_file("plots/a.plot", 100)
        .virtual_file("other/b.plot", 100)
        .start()
        .await?;
    let c = client();
    let ep = emu.endpoint();
    let v4: Value = authorize_version(&c, &emu, "v4").await?.json().await?;
    assert!(v4["apiInfo"]["storageApi"]["allowed"]["buckets"].is_null());
    assert_eq!(
        v4["apiInfo"]["storageApi"]["allowed"]["namePrefix"],
        "plots/"
    );
    let v3: Value = authorize_version(&c, &emu, "v3").await?.json().await?;
    assert!(v3["apiInfo"]["storageApi"]["bucketId"].is_null());
    let v2: Value = authorize_version(&c, &emu, "v2").await?.json().await?;
    assert!(v2["allowed"]["bucketId"].is_null());
    let tok = token(&c, &emu).await;

    // list_buckets: GET query and POST JSON.
    let r: Value = c
        .get(format!(
            "{ep}/b2api/v4/b2_list_buckets?accountId={}",
            emu.account_id()
        ))
        .header("Authorization", &tok)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(r["buckets"][0]["bucketId"], emu.bucket_id());
    assert_eq!(r["buckets"][0]["bucketName"], emu.bucket_name());
    assert_eq!(r["buckets"][0]["bucketType"], "allPrivate");
    let r: Value = c
        .post(format!("{ep}/b2api/v4/b2_list_buckets"))
        .header("Authorization", &tok)
        .json(&json!({"accountId": emu.account_id(), "bucketName": "nope"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(r["buckets"], json!([]));
    let r = c
        .post(format!("{ep}/b2api/v4/b2_list_buckets"))
        .header("Authorization", &tok)
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(b2_error(r).await.1, "bad_request");

    // namePrefix: listing must stay under it, downloads outside it are refused.
    let err = list_page(&c, &emu, &tok, json!({"bucketId": emu.bucket_id()})).await;
    assert_eq!(err.err().map(|e| e.1), Some("unauthorized".to_string()));
    let page = list_page(
        &c,
        &emu,
        &tok,
        json!({"bucketId": emu.bucket_id(), "prefix": "plots/"}),
    )
    .await
    .map_err(|e| format!("{e:?}"))?;
    assert_eq!(names(&page), ["plots/a.plot"]);
    let r = get(&c, &by_name_url(&emu, "other/b.plot"), &tok, None).await;
    assert_eq!(b2_error(r).await.1, "unauthorized");
    let id = emu.file("other/b.plot").map(|f| f.id).unwrap_or_default();
    let r = get(
        &c,
        &format!("{ep}/b2api/v4/b2_download_file_by_id?fileId={}", enc(&id)),
        &tok,
        None,
    )
    .await;
    assert_eq!(r.status(), 401);
    let r = get(&c, &by_name_url(&emu, "plots/a.plot"), &tok, None).await;
    assert_eq!(r.status(), 200);
    // Unrestricted key, unknown bucket: 404.
    let r = get(&c, &format!("{ep}/file/nobucket/plots/a.plot"), &tok, None).await;
    assert_eq!(r.status(), 404);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn restricted_key_list_buckets() -> TestResult {
    let emu = Emulator::builder().start().await?;
    let c = client();
    let ep = emu.endpoint();
    let tok = token(&c, &emu).await;
    let r = c
        .get(format!(
            "{ep}/b2api/v3/b2_list_buckets?accountId={}&bucketName={}",
            emu.account_id(),
            emu.bucket_name()
        ))
        .header("Authorization", &tok)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(v["buckets"][0]["bucketId"], emu.bucket_id());
    let r = c
        .get(format!(
            "{ep}/b2api/v3/b2_list_buckets?accountId={}",
            emu.account_id()
        ))
        .header("Authorization", &tok)
        .send()
        .await?;
    assert_eq!(b2_error(r).await.1, "unauthorized");
    let r = c
        .get(format!(
            "{ep}/b2api/v3/b2_list_buckets?accountId=someoneelse&bucketName=x"
        ))
        .header("Authorization", &tok)
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn list_25000_files_in_pages() -> TestResult {
    let emu = Emulator::builder()
        .virtual_files("farm/plot-k32-", 25_000, 108 << 30)
        .start()
        .await?;
    let c = client();
    let tok = token(&c, &emu).await;
    let mut all = Vec::new();
    let mut start: Option<String> = None;
    let mut calls = 0;
    loop {
        let mut params = json!({"bucketId": emu.bucket_id(), "maxFileCount": 10000});
        if let Some(s) = &start {
            params["startFileName"] = json!(s);
        }
        let page = list_page(&c, &emu, &tok, params)
            .await
            .map_err(|e| format!("{e:?}"))?;
        calls += 1;
        let files = page["files"].as_array().cloned().unwrap_or_default();
        assert!(files.len() <= 10_000);
        if let Some(f) = files.first() {
            assert_eq!(f["action"], "upload");
            assert_eq!(f["contentLength"], 108u64 << 30);
            assert_eq!(f["bucketId"], emu.bucket_id());
            assert_eq!(f["accountId"], emu.account_id());
            assert!(f["fileId"].is_string());
            assert!(f["contentSha1"].is_string());
            assert!(f["contentType"].is_string());
            assert!(f["uploadTimestamp"].is_u64());
            assert!(f["fileInfo"].is_object());
        }
        all.extend(names(&page));
        match page["nextFileName"].as_str() {
            Some(next) => start = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(calls, 3);
    assert_eq!(all.len(), 25_000);
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, all);
    assert_eq!(all[0], "farm/plot-k32-000000.plot");
    assert_eq!(all[24_999], "farm/plot-k32-024999.plot");

    // GET form, default page size 100.
    let r: Value = c
        .get(format!(
            "{}/b2api/v4/b2_list_file_names?bucketId={}&startFileName={}",
            emu.endpoint(),
            emu.bucket_id(),
            enc("farm/plot-k32-024950.plot")
        ))
        .header("Authorization", &tok)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(names(&r).len(), 50);
    assert!(r["nextFileName"].is_null());
    let r: Value = c
        .get(format!(
            "{}/b2api/v4/b2_list_file_names?bucketId={}",
            emu.endpoint(),
            emu.bucket_id()
        ))
        .header("Authorization", &tok)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(names(&r).len(), 100);
    assert_eq!(r["nextFileName"], "farm/plot-k32-000100.plot");

    for (params, code) in [
        (
            json!({"bucketId": emu.bucket_id(), "maxFileCount": 10001}),
            "bad_request",
        ),
        (json!({"maxFileCount": 10}), "bad_request"),
        (json!({"bucketId": "wrong"}), "bad_request"),
    ] {
        let e = list_page(&c, &emu, &tok, params).await.err();
        assert_eq!(e.map(|e| e.1), Some(code.to_string()));
    }
    assert_eq!(emu.stats().requests.list_file_names, 8);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn list_prefix_and_delimiter() -> TestResult {
    let mut b = Emulator::builder();
    for n in [
        "a/1.plot",
        "a/2.plot",
        "a0.plot",
        "b/c/d.plot",
        "b/e.plot",
        "top.plot",
    ] {
        b = b.virtual_file(n, 10);
    }
    let emu = b.start().await?;
    let c = client();
    let tok = token(&c, &emu).await;
    let bid = emu.bucket_id().to_string();
    let page = |p: Value| {
        let (c, emu, tok) = (&c, &emu, &tok);
        async move {
            list_page(c, emu, tok, p)
                .await
                .map_err(|e| format!("{e:?}"))
        }
    };

    let p = page(json!({"bucketId": bid, "delimiter": "/"})).await?;
    assert_eq!(names(&p), ["a/", "a0.plot", "b/", "top.plot"]);
    let folder = &p["files"][0];
    assert_eq!(folder["action"], "folder");
    assert_eq!(folder["contentLength"], 0);
    assert_eq!(p["files"][1]["action"], "upload");

    let p = page(json!({"bucketId": bid, "delimiter": "/", "prefix": "b/"})).await?;
    assert_eq!(names(&p), ["b/c/", "b/e.plot"]);
    let p = page(json!({"bucketId": bid, "prefix": "a"})).await?;
    assert_eq!(names(&p), ["a/1.plot", "a/2.plot", "a0.plot"]);

    // Paging through folders one entry at a time.
    let mut seen = Vec::new();
    let mut start = String::new();
    loop {
        let p = page(
            json!({"bucketId": bid, "delimiter": "/", "maxFileCount": 1, "startFileName": start}),
        )
        .await?;
        seen.extend(names(&p));
        match p["nextFileName"].as_str() {
            Some(n) => start = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["a/", "a0.plot", "b/", "top.plot"]);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn download_by_name_and_id_get_and_head() -> TestResult {
    let name = "dir/ä plot+1.plot";
    let emu = Emulator::builder()
        .virtual_file(name, 100_000)
        .start()
        .await?;
    let c = client();
    let ep = emu.endpoint();
    let tok = token(&c, &emu).await;
    let info = emu.file(name).ok_or("no file")?;
    let expected = virtual_bytes(name_seed(name), 0, 100_000);
    assert_eq!(emu.expected_bytes(name, 0, 100_000)?, expected);

    let r = get(&c, &by_name_url(&emu, name), &tok, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some("100000"));
    assert_eq!(header(&r, "x-bz-file-id"), Some(info.id.as_str()));
    assert_eq!(
        header(&r, "x-bz-file-name"),
        Some("dir/%C3%A4%20plot%2B1.plot")
    );
    assert_eq!(header(&r, "x-bz-content-sha1"), Some("none"));
    assert_eq!(header(&r, "accept-ranges"), Some("bytes"));
    assert!(header(&r, "x-bz-upload-timestamp").is_some_and(|t| t.parse::<u64>().is_ok()));
    assert!(header(&r, "content-type").is_some());
    assert!(header(&r, "content-range").is_none());
    assert_eq!(r.bytes().await?.as_ref(), &expected[..]);

    let id_url = format!(
        "{ep}/b2api/v3/b2_download_file_by_id?fileId={}",
        enc(&info.id)
    );
    let r = get(&c, &id_url, &tok, Some("bytes=10-19")).await;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), Some("bytes 10-19/100000"));
    assert_eq!(r.bytes().await?.as_ref(), &expected[10..20]);

    let r = c
        .head(by_name_url(&emu, name))
        .header("Authorization", &tok)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some("100000"));
    assert_eq!(header(&r, "x-bz-file-id"), Some(info.id.as_str()));
    let r = c
        .head(&id_url)
        .header("Authorization", &tok)
        .header("Range", "bytes=0-99")
        .send()
        .await?;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-length"), Some("100"));

    // Token as a query parameter.
    let r = c
        .get(format!(
            "{}?Authorization={}",
            by_name_url(&emu, name),
            enc(&tok)
        ))
        .header("Range", "bytes=-5")
        .send()
        .await?;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await?.as_ref(), &expected[99_995..]);

    // Missing things.
    let r = get(&c, &by_name_url(&emu, "nope.plot"), &tok, None).await;
    assert_eq!(
        b2_error(r).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let r = get(
        &c,
        &format!("{ep}/b2api/v4/b2_download_file_by_id?fileId=4_zzz"),
        &tok,
        None,
    )
    .await;
    assert_eq!(
        b2_error(r).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let r = get(&c, &format!("{ep}/file/otherbucket/x"), &tok, None).await;
    assert_eq!(r.status(), 401);

    let s = emu.stats();
    assert_eq!(s.requests.download_by_name, 4);
    assert_eq!(s.requests.download_by_id, 2);
    assert_eq!(s.requests.head, 2);
    assert_eq!(s.ranges_served, 3);
    assert_eq!(s.bytes_sent, 100_000 + 10 + 5);
    assert_eq!(s.recent_ranges.len(), 3);
    assert_eq!((s.recent_ranges[1].start, s.recent_ranges[1].end), (10, 19));
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn range_forms() -> TestResult {
    let size = 1000u64;
    let emu = Emulator::builder()
        .virtual_file("f", size)
        .virtual_file("empty", 0)
        .start()
        .await?;
    let c = client();
    let tok = token(&c, &emu).await;
    let url = by_name_url(&emu, "f");
    let all = emu.expected_bytes("f", 0, size)?;
    let cases: [(&str, u16, Option<&str>, std::ops::Range<usize>); 8] = [
        ("bytes=0-99", 206, Some("bytes 0-99/1000"), 0..100),
        ("bytes=900-1999", 206, Some("bytes 900-999/1000"), 900..1000),
        ("bytes=990-", 206, Some("bytes 990-999/1000"), 990..1000),
        ("bytes=-10", 206, Some("bytes 990-999/1000"), 990..1000),
        ("bytes=999-999", 206, Some("bytes 999-999/1000"), 999..1000),
        ("bytes=0-", 200, None, 0..1000),
        ("bytes=0-1,5-9", 200, None, 0..1000),
        ("garbage", 200, None, 0..1000),
    ];
    for (range, status, content_range, slice) in cases {
        let r = get(&c, &url, &tok, Some(range)).await;
        assert_eq!(r.status().as_u16(), status, "{range}");
        assert_eq!(header(&r, "content-range"), content_range, "{range}");
        let len = slice.len().to_string();
        assert_eq!(header(&r, "content-length"), Some(len.as_str()), "{range}");
        assert_eq!(r.bytes().await?.as_ref(), &all[slice], "{range}");
    }
    for range in ["bytes=1000-", "bytes=1000-2000", "bytes=5000-5001"] {
        let r = get(&c, &url, &tok, Some(range)).await;
        assert_eq!(header(&r, "content-range"), Some("bytes */1000"));
        assert_eq!(
            b2_error(r).await,
            (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable".into()
            )
        );
    }
    let r = get(&c, &by_name_url(&emu, "empty"), &tok, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await?.len(), 0);
    let r = get(&c, &by_name_url(&emu, "empty"), &tok, Some("bytes=0-10")).await;
    assert_eq!(r.status(), 416);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn big_virtual_file() -> TestResult {
    let size: u64 = 108 << 30;
    let emu = Emulator::builder()
        .bucket("plots")
        .virtual_file("big.plot", size)
        .start()
        .await?;
    let c = client();
    let tok = token(&c, &emu).await;
    let url = by_name_url(&emu, "big.plot");
    let r = c.head(&url).header("Authorization", &tok).send().await?;
    assert_eq!(
        header(&r, "content-length"),
        Some(size.to_string().as_str())
    );
    let start = size - 16_382 - 3;
    let r = get(
        &c,
        &url,
        &tok,
        Some(&format!("bytes={start}-{}", size + 100)),
    )
    .await;
    assert_eq!(r.status(), 206);
    let cr = format!("bytes {start}-{}/{size}", size - 1);
    assert_eq!(header(&r, "content-range"), Some(cr.as_str()));
    let body = r.bytes().await?;
    assert_eq!(
        body.as_ref(),
        &virtual_bytes(name_seed("big.plot"), start, 16_385)[..]
    );
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn tokens_expire_and_bad_tokens_are_refused() -> TestResult {
    let emu = Emulator::builder().virtual_file("f", 10).start().await?;
    let c = client();
    let url = by_name_url(&emu, "f");
    let tok = token(&c, &emu).await;
    assert_eq!(get(&c, &url, &tok, None).await.status(), 200);

    let r = get(&c, &url, "4_notatoken", None).await;
    assert_eq!(
        b2_error(r).await,
        (StatusCode::UNAUTHORIZED, "bad_auth_token".into())
    );
    let r = c.get(&url).send().await?;
    assert_eq!(b2_error(r).await.0, StatusCode::UNAUTHORIZED);

    emu.expire_tokens();
    let r = get(&c, &url, &tok, None).await;
    assert_eq!(
        b2_error(r).await,
        (StatusCode::UNAUTHORIZED, "expired_auth_token".into())
    );
    let list = c
        .get(format!(
            "{}/b2api/v4/b2_list_file_names?bucketId={}",
            emu.endpoint(),
            emu.bucket_id()
        ))
        .header("Authorization", &tok)
        .send()
        .await?;
    assert_eq!(b2_error(list).await.1, "expired_auth_token");

    // A fresh token works; a short lifetime runs out on its own.
    emu.set_token_lifetime(Duration::from_millis(500))?;
    let short = token(&c, &emu).await;
    assert_eq!(get(&c, &url, &short, None).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = get(&c, &url, &short, None).await;
    assert_eq!(b2_error(r).await.1, "expired_auth_token");

    // Expiring over HTTP.
    emu.set_token_lifetime(Duration::from_secs(3600))?;
    let fresh = token(&c, &emu).await;
    assert_eq!(get(&c, &url, &fresh, None).await.status(), 200);
    let r = c
        .post(format!("{}/_emu/expire-tokens", emu.endpoint()))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(get(&c, &url, &fresh, None).await.status(), 401);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn every_fault_kind_is_observable() -> TestResult {
    let size = 1 << 20;
    let emu = Emulator::builder()
        .virtual_file("f", size)
        .seed(3)
        .start()
        .await?;
    let c = client();
    let tok = token(&c, &emu).await;
    let url = by_name_url(&emu, "f");
    let only = |f: Fault| {
        let mut cfg = FaultConfig::default();
        cfg.set(f, 1.0);
        cfg.retry_after_secs = 7;
        cfg
    };

    emu.set_faults(only(Fault::ServiceUnavailable))?;
    let r = get(&c, &url, &tok, Some("bytes=0-99")).await;
    assert_eq!(
        b2_error(r).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable".into()
        )
    );

    emu.set_faults(only(Fault::TooManyRequests))?;
    let r = get(&c, &url, &tok, Some("bytes=0-99")).await;
    assert_eq!(header(&r, "retry-after"), Some("7"));
    assert_eq!(
        b2_error(r).await,
        (StatusCode::TOO_MANY_REQUESTS, "too_many_requests".into())
    );

    emu.set_faults(only(Fault::InternalError))?;
    let r = get(&c, &url, &tok, Some("bytes=0-99")).await;
    assert_eq!(
        b2_error(r).await,
        (StatusCode::INTERNAL_SERVER_ERROR, "internal_error".into())
    );
    // HEAD gets the status faults too.
    let r = c.head(&url).header("Authorization", &tok).send().await?;
    assert_eq!(r.status(), 500);

    emu.set_faults(only(Fault::Reset))?;
    emu.reset_stats();
    let r = get(&c, &url, &tok, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(size.to_string().as_str())
    );
    assert!(r.bytes().await.is_err(), "reset body must fail");
    // HEAD is not affected by body faults.
    let r = c.head(&url).header("Authorization", &tok).send().await?;
    assert_eq!(r.status(), 200);

    emu.set_faults(only(Fault::Truncated))?;
    let r = get(&c, &url, &tok, Some("bytes=1000-200999")).await;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-length"), Some("200000"));
    assert!(r.bytes().await.is_err(), "truncated body must fail");

    emu.set_faults(only(Fault::WrongRange))?;
    let r = get(&c, &url, &tok, Some("bytes=1000-1999")).await;
    assert_eq!(r.status(), 206);
    let cr = header(&r, "content-range").unwrap_or_default().to_string();
    assert_ne!(cr, format!("bytes 1000-1999/{size}"));
    let (a, b) = cr
        .strip_prefix("bytes ")
        .and_then(|s| s.split_once('/'))
        .and_then(|(r, _)| r.split_once('-'))
        .ok_or("bad content-range")?;
    let (a, b): (u64, u64) = (a.parse()?, b.parse()?);
    assert_eq!(b - a + 1, 1000);
    let body = r.bytes().await?;
    assert_eq!(body.as_ref(), &emu.expected_bytes("f", a, 1000)?[..]);
    // A whole-file request cannot be shifted: served normally.
    let r = get(&c, &url, &tok, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await?.len() as u64, size);

    let s = emu.stats();
    assert_eq!(s.faults.reset, 1);
    assert_eq!(s.faults.truncated, 1);
    assert_eq!(s.faults.wrong_range, 1);
    // reset sent half of 1 MiB, truncated half of 200000, wrong_range 1000, whole file 1 MiB.
    assert_eq!(s.bytes_sent, size / 2 + 100_000 + 1000 + size);
    assert_eq!(s.recent_ranges[0].fault, Some(Fault::Reset));

    // API calls are only faulted with faults_on_api.
    emu.set_faults(only(Fault::ServiceUnavailable))?;
    assert_eq!(authorize_version(&c, &emu, "v4").await?.status(), 200);
    let mut api = only(Fault::ServiceUnavailable);
    api.on_api = true;
    emu.set_faults(api)?;
    assert_eq!(authorize_version(&c, &emu, "v4").await?.status(), 503);
    emu.set_faults(FaultConfig::default())?;

    // Offline: everything B2 answers 503 at once, control routes still work.
    emu.set_offline(true);
    assert_eq!(authorize_version(&c, &emu, "v4").await?.status(), 503);
    assert_eq!(get(&c, &url, &tok, None).await.status(), 503);
    let r = c
        .get(format!("{}/_emu/stats", emu.endpoint()))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    emu.set_offline(false);
    assert_eq!(get(&c, &url, &tok, Some("bytes=0-0")).await.status(), 206);
    let s = emu.stats();
    assert_eq!(s.faults.offline, 2);
    assert_eq!(s.faults.service_unavailable, 1);

    // Out-of-range probabilities are refused.
    assert!(emu.set_fault(Fault::Reset, 1.5).is_err());
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn first_attempt_delay_stalls_only_the_first_identical_request() -> TestResult {
    let emu = Emulator::builder()
        .virtual_file("f", 100_000)
        .first_attempt_delay(Duration::from_millis(1500))
        .start()
        .await?;
    let c = client();
    let tok = token(&c, &emu).await;
    let url = by_name_url(&emu, "f");
    // Bounds far apart (1.5 s stall vs. < 1 s) so a loaded machine cannot blur them.
    let timed = |range: &'static str| {
        let (c, url, tok) = (&c, &url, &tok);
        async move {
            let t = Instant::now();
            let r = get(c, url, tok, Some(range)).await;
            assert_eq!(r.status(), 206);
            let _ = r.bytes().await;
            t.elapsed()
        }
    };
    assert!(timed("bytes=0-8190").await >= Duration::from_millis(1500));
    assert!(timed("bytes=0-8190").await < Duration::from_millis(1000));
    assert!(timed("bytes=8191-16381").await >= Duration::from_millis(1500));
    // A hedge: a second identical request issued while the first is stalled is fast.
    let (slow, fast) = tokio::join!(timed("bytes=100-200"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        timed("bytes=100-200").await
    });
    assert!(slow >= Duration::from_millis(1500));
    assert!(fast < Duration::from_millis(1000));
    assert_eq!(emu.stats().first_attempt_delays, 3);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_connections_and_peak_concurrency() -> TestResult {
    let emu = Emulator::builder()
        .virtual_file("f", 1 << 20)
        .latency(Duration::from_millis(400), 0.0)
        .start()
        .await?;
    let tok = token(&client(), &emu).await;
    emu.reset_stats();
    let c = client();
    let url = by_name_url(&emu, "f");
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let (c, url, tok) = (c.clone(), url.clone(), tok.clone());
        tasks.push(tokio::spawn(async move {
            let r = get(
                &c,
                &url,
                &tok,
                Some(&format!("bytes={}-{}", i * 1000, i * 1000 + 999)),
            )
            .await;
            r.bytes().await.map(|b| b.len())
        }));
    }
    for t in tasks {
        assert_eq!(t.await??, 1000);
    }
    let s = emu.stats();
    assert_eq!(s.peak_downloads_in_flight, 8);
    assert_eq!(s.downloads_in_flight, 0);
    assert_eq!(s.connections_opened, 8);
    assert_eq!(s.requests.download_by_name, 8);
    assert_eq!(s.ranges_served, 8);
    assert_eq!(s.bytes_sent, 8000);
    assert_eq!(s.responses_by_status.get(&206), Some(&8));

    // Keep-alive: sequential requests reuse the pooled connections.
    emu.set_latency(LatencyConfig::default())?;
    for _ in 0..5 {
        let _ = get(&c, &url, &tok, Some("bytes=0-9")).await.bytes().await?;
    }
    let s = emu.stats();
    assert_eq!(s.connections_opened, 8);
    assert_eq!(s.peak_downloads_in_flight, 8);

    // Reset over HTTP (that request opens one connection of its own).
    let ctl = client();
    let r = ctl
        .post(format!("{}/_emu/reset", emu.endpoint()))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await?;
    let s: b2fs_tests::emulator::Stats = ctl
        .get(format!("{}/_emu/stats", emu.endpoint()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(s.peak_downloads_in_flight, 0);
    assert_eq!(s.bytes_sent, 0);
    assert_eq!(s.requests.download_by_name, 0);
    // hyper hands a finished connection back to the pool asynchronously, so the stats
    // request may find the pool still empty and open a second connection after the reset.
    assert!(
        s.connections_opened <= 1,
        "reset must zero the connection count: {}",
        s.connections_opened
    );
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn latency_and_tail_are_applied() -> TestResult {
    let emu = Emulator::builder()
        .virtual_file("f", 100)
        .latency(Duration::from_millis(80), 0.0)
        .start()
        .await?;
    let c = client();
    let tok = token(&c, &emu).await;
    let url = by_name_url(&emu, "f");
    let t = Instant::now();
    let _ = get(&c, &url, &tok, None).await.bytes().await?;
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(80) && e < Duration::from_millis(1000),
        "{e:?}"
    );
    emu.set_latency(LatencyConfig {
        median: Duration::from_millis(20),
        sigma: 0.0,
        tail_probability: 1.0,
        tail_delay: Duration::from_millis(100),
    })?;
    let t = Instant::now();
    let _ = get(&c, &url, &tok, None).await.bytes().await?;
    assert!(t.elapsed() >= Duration::from_millis(120));
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_is_a_global_cap() -> TestResult {
    let emu = Emulator::builder()
        .virtual_file("f", 1 << 20)
        .bandwidth(2_000_000)
        .start()
        .await?;
    let c = client();
    let tok = token(&c, &emu).await;
    let url = by_name_url(&emu, "f");
    // 2 x 200 KB concurrently over a 2 MB/s link: ~0.2 s in total.
    let t = Instant::now();
    let (a, b) = tokio::join!(
        async {
            get(&c, &url, &tok, Some("bytes=0-199999"))
                .await
                .bytes()
                .await
        },
        async {
            get(&c, &url, &tok, Some("bytes=200000-399999"))
                .await
                .bytes()
                .await
        },
    );
    let e = t.elapsed();
    assert_eq!(a?.len() + b?.len(), 400_000);
    assert!(
        e >= Duration::from_millis(180) && e < Duration::from_millis(1500),
        "{e:?}"
    );
    emu.set_bandwidth(None);
    let t = Instant::now();
    let _ = get(&c, &url, &tok, None).await.bytes().await?;
    assert!(t.elapsed() < Duration::from_millis(1000));
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn replace_and_remove_files() -> TestResult {
    let emu = Emulator::builder()
        .virtual_file("p.plot", 4096)
        .start()
        .await?;
    let c = client();
    let ep = emu.endpoint();
    let tok = token(&c, &emu).await;
    let url = by_name_url(&emu, "p.plot");
    let old = emu.file("p.plot").ok_or("no file")?;
    let old_bytes = get(&c, &url, &tok, None).await.bytes().await?;

    let new = emu.replace_file("p.plot")?;
    assert_ne!(new.id, old.id);
    let r = get(&c, &url, &tok, None).await;
    assert_eq!(header(&r, "x-bz-file-id"), Some(new.id.as_str()));
    let new_bytes = r.bytes().await?;
    assert_ne!(new_bytes, old_bytes);
    assert_eq!(
        new_bytes.as_ref(),
        &emu.expected_bytes("p.plot", 0, 4096)?[..]
    );
    let old_id_url = format!(
        "{ep}/b2api/v4/b2_download_file_by_id?fileId={}",
        enc(&old.id)
    );
    assert_eq!(get(&c, &old_id_url, &tok, None).await.status(), 404);

    emu.add_virtual_file("q.plot", 10);
    emu.remove_file("p.plot")?;
    assert_eq!(get(&c, &url, &tok, None).await.status(), 404);
    assert!(emu.remove_file("p.plot").is_err());
    let page = list_page(&c, &emu, &tok, json!({"bucketId": emu.bucket_id()}))
        .await
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(names(&page), ["q.plot"]);

    // The same over HTTP.
    let r: Value = c
        .post(format!("{ep}/_emu/files"))
        .json(&json!({"name": "r.plot", "size": "1KiB"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(r["size"], 1024);
    let r = c
        .post(format!("{ep}/_emu/files/replace"))
        .json(&json!({"name": "r.plot"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{ep}/_emu/files/remove"))
        .json(&json!({"name": "r.plot"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{ep}/_emu/files/remove"))
        .json(&json!({"name": "r.plot"}))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn serves_a_directory() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("sub/deeper"))?;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("sub/deeper/big.bin"), &big)?;
    std::fs::write(dir.path().join("small.txt"), b"hello")?;
    let emu = Emulator::builder().dir(dir.path()).start().await?;
    let c = client();
    let tok = token(&c, &emu).await;
    let page = list_page(&c, &emu, &tok, json!({"bucketId": emu.bucket_id()}))
        .await
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(names(&page), ["small.txt", "sub/deeper/big.bin"]);
    assert_eq!(page["files"][1]["contentLength"], 300_000);

    let r = get(&c, &by_name_url(&emu, "sub/deeper/big.bin"), &tok, None).await;
    assert_eq!(r.bytes().await?.as_ref(), &big[..]);
    let r = get(
        &c,
        &by_name_url(&emu, "sub/deeper/big.bin"),
        &tok,
        Some("bytes=70000-140001"),
    )
    .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await?.as_ref(), &big[70_000..140_002]);
    assert_eq!(emu.expected_bytes("small.txt", 1, 100)?, b"ello");
    let r = get(&c, &by_name_url(&emu, "small.txt"), &tok, None).await;
    assert_eq!(r.bytes().await?.as_ref(), b"hello");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn config_over_http() -> TestResult {
    let emu = Emulator::builder().virtual_file("f", 100).start().await?;
    let c = client();
    let ep = emu.endpoint();
    let tok = token(&c, &emu).await;
    let r: Value = c
        .post(format!("{ep}/_emu/config"))
        .json(&json!({"latency": {"median": "30ms"}, "faults": {"internal_error": 1.0}, "bandwidth": "10MB/s"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(r["latency"]["median"], "30ms");
    assert_eq!(r["bandwidth"], 10_000_000);
    let k = emu.knobs();
    assert_eq!(k.latency.median, Duration::from_millis(30));
    assert_eq!(k.faults.internal_error, 1.0);
    assert_eq!(
        get(&c, &by_name_url(&emu, "f"), &tok, None).await.status(),
        500
    );

    let r = c
        .post(format!("{ep}/_emu/config"))
        .json(&json!({"latncy": 1}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{ep}/_emu/config"))
        .json(&json!({"faults": {"reset": 2.0}}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{ep}/_emu/config"))
        .json(&json!({"faults": {"internal_error": 0.0}, "offline": true, "expire_tokens": true}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert!(emu.knobs().offline);
    let got: Value = c
        .get(format!("{ep}/_emu/config"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(got["offline"], true);
    assert_eq!(got["latency"]["median"], "30ms");
    emu.set_offline(false);
    let r = get(&c, &by_name_url(&emu, "f"), &tok, None).await;
    assert_eq!(b2_error(r).await.1, "expired_auth_token");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_account_rate_limit_answers_429_with_retry_after() -> TestResult {
    // 20 downloads/s with a bucket of 10: a burst of 40 gets about 10 through.
    let emu = Emulator::builder()
        .virtual_file("f", 1000)
        .rate_limit(20.0, 10.0)
        .start()
        .await?;
    let c = client();
    let tok = token(&c, &emu).await;
    let url = by_name_url(&emu, "f");
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..40 {
        let r = get(&c, &url, &tok, Some("bytes=0-9")).await;
        match r.status().as_u16() {
            206 => ok += 1,
            429 => {
                let ra: u64 = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("Retry-After");
                assert!(ra >= 1);
                let (_, code) = b2_error(r).await;
                assert_eq!(code, "too_many_requests");
                limited += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    // Generous for a slow machine: the loop may take long enough to earn a few more tokens.
    assert!((10..=25).contains(&ok), "{ok} admitted");
    assert_eq!(emu.stats().rate_limited, limited);
    assert_eq!(
        emu.stats().faults.injected(),
        0,
        "not counted as an injected fault"
    );
    // Turning the limit off over HTTP admits everything.
    let r = c
        .post(format!("{}/_emu/config", emu.endpoint()))
        .json(&json!({"rate_limit": {"rps": 0}}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    for _ in 0..20 {
        assert_eq!(get(&c, &url, &tok, Some("bytes=0-9")).await.status(), 206);
    }
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_serving() -> TestResult {
    let emu = Emulator::builder()
        .virtual_file("f", 1 << 30)
        .bandwidth(1_000_000)
        .start()
        .await?;
    let c = client();
    let tok = token(&c, &emu).await;
    // A slow body in flight must not hold shutdown up.
    let r = get(&c, &by_name_url(&emu, "f"), &tok, None).await;
    assert_eq!(r.status(), 200);
    let t = Instant::now();
    emu.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(r.bytes().await.is_err());
    assert!(
        c.get(format!("{}/_emu/stats", emu.endpoint()))
            .send()
            .await
            .is_err()
    );
    Ok(())
}

/// v1 clients (rclone's b2 backend among them) read a file's length from `size`; v2+ from `contentLength` only.
#[tokio::test]
async fn v1_listing_carries_size() -> TestResult {
    let emu = Emulator::builder()
        .virtual_file("a.plot", 123_456)
        .start()
        .await?;
    let c = client();
    let tok = token(&c, &emu).await;
    for (version, size) in [("v1", Some(123_456)), ("v4", None)] {
        let page: Value = c
            .post(format!(
                "{}/b2api/{version}/b2_list_file_names",
                emu.endpoint()
            ))
            .header("Authorization", &tok)
            .json(&json!({ "bucketId": emu.bucket_id() }))
            .send()
            .await?
            .json()
            .await?;
        let file = &page["files"][0];
        assert_eq!(file["contentLength"], 123_456, "{version}: {page}");
        assert_eq!(file["size"].as_u64(), size, "{version}: {page}");
    }
    emu.shutdown().await;
    Ok(())
}
