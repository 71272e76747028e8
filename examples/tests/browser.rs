//! The quickstart classroom in headless Chromium: a teacher and two students
//! on the real page, checked through the pages themselves. Saves a
//! screenshot of the teacher view to target/classroom-teacher.png.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use examples::classroom::{ClassroomConfig, serve};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

async fn start_chromedriver() -> (Driver, String) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts (apt-get install chromium-driver)");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (Driver(child), url)
}

async fn browser(driver: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
        }),
    );
    ClientBuilder::new(HttpConnector::new()).capabilities(caps).connect(driver).await.expect("a browser session")
}

/// Polls the text of `css` on a page until `want` holds (or fails after 15 s).
async fn wait_text(page: &Client, css: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(el) = page.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
            && want(&text)
        {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what} ({css})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(page: &Client, css: &str) {
    page.find(Locator::Css(css)).await.unwrap_or_else(|_| panic!("{css} exists")).click().await.expect("click");
}

async fn type_into(page: &Client, css: &str, text: &str) {
    let el = page.find(Locator::Css(css)).await.unwrap_or_else(|_| panic!("{css} exists"));
    el.clear().await.expect("clear");
    el.send_keys(text).await.expect("type");
}

/// Connections the server has let in so far (its `/metrics`).
async fn entries(addr: std::net::SocketAddr) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connects");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("asks");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("reads");
    body.lines()
        .find(|l| l.starts_with("roomkit_entries_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver"]
async fn a_class_in_the_browser() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let running = serve(listener, ClassroomConfig::default()).await.expect("server starts");
    let base = format!("http://{}", running.addr);
    let (_driver, driver_url) = start_chromedriver().await;

    let teacher = browser(&driver_url).await;
    let alice = browser(&driver_url).await;
    let bob = browser(&driver_url).await;
    teacher.goto(&format!("{base}/?role=teacher&uin=1&room=42")).await.expect("teacher page");
    alice.goto(&format!("{base}/?role=student&uin=101&room=42")).await.expect("alice page");
    bob.goto(&format!("{base}/?role=student&uin=102&room=42")).await.expect("bob page");

    // Members appear, with counts by role.
    wait_text(&teacher, "#members-total", "three members", |t| t == "3").await;
    wait_text(&teacher, "#count-student", "two students", |t| t == "2").await;
    wait_text(&alice, "#members", "the member list", |t| t.contains("1 (teacher)") && t.contains("102")).await;

    // Chat arrives.
    type_into(&alice, "#chat-input", "hello from alice").await;
    click(&alice, "#chat-send").await;
    wait_text(&teacher, "#chat-log", "alice's chat at the teacher", |t| t.contains("101: hello from alice")).await;
    wait_text(&bob, "#chat-log", "alice's chat at bob", |t| t.contains("101: hello from alice")).await;

    // Flowers add up in the room's totals.
    click(&alice, "#react-flower").await;
    click(&bob, "#react-flower").await;
    wait_text(&teacher, "#flowers", "two flowers", |t| t == "2").await;

    // A raised hand reaches the teacher.
    click(&bob, "#hand-raise").await;
    wait_text(&teacher, "#hand-queue", "bob's hand", |t| t.contains("102")).await;

    // An answer card tallies.
    type_into(&teacher, "#card-correct", "0").await;
    click(&teacher, "#card-open").await;
    wait_text(&alice, "#card-buttons", "the card at alice", |t| t.contains('A')).await;
    click(&alice, ".card-option[data-option='0']").await;
    wait_text(&bob, "#card-buttons", "the card at bob", |t| t.contains('B')).await;
    click(&bob, ".card-option[data-option='1']").await;
    wait_text(&teacher, "#card-tally", "the live tally", |t| t == "1 / 1 / 0 / 0").await;
    wait_text(&alice, "#card-mine", "alice's own answer", |t| t == "A").await;
    click(&teacher, "#card-close").await;
    wait_text(&alice, "#card-result", "the card's result", |t| t == "2 answered, 1 right; correct: A (you were right)")
        .await;
    wait_text(&bob, "#card-result", "the card's result", |t| t == "2 answered, 1 right; correct: A (not this time)")
        .await;

    // A red packet conserves its total.
    type_into(&teacher, "#packet-amount", "100").await;
    type_into(&teacher, "#packet-count", "2").await;
    click(&teacher, "#packet-send").await;
    wait_text(&alice, "#packet-state", "the packet at alice", |t| t.contains("100 in 2")).await;
    wait_text(&bob, "#packet-state", "the packet at bob", |t| t.contains("100 in 2")).await;
    click(&alice, "#packet-grab").await;
    click(&bob, "#packet-grab").await;
    let amount = |t: &str| t.trim_start_matches("you got ").parse::<u64>().ok();
    let a = wait_text(&alice, "#packet-grabbed", "alice's share", |t| amount(t).is_some()).await;
    let b = wait_text(&bob, "#packet-grabbed", "bob's share", |t| amount(t).is_some()).await;
    assert_eq!(amount(&a).expect("n") + amount(&b).expect("n"), 100);
    wait_text(&teacher, "#packet-state", "the packet's state", |t| t.starts_with("100 of 100 taken by 2")).await;

    // A dropped connection reconnects and recovers what was said meanwhile.
    bob.execute("window.roomkitDrop()", vec![]).await.expect("drop bob's socket");
    wait_text(&bob, "#status", "bob disconnected", |t| t == "disconnected").await;
    type_into(&teacher, "#chat-input", "while bob was away").await;
    click(&teacher, "#say-send").await;
    wait_text(&bob, "#status", "bob reconnected", |t| t == "connected").await;
    wait_text(&bob, "#chat-log", "the recovered teacher message", |t| t.contains("teacher: while bob was away")).await;

    // Mute-all silences the students.
    click(&teacher, "#mute-all").await;
    wait_text(&alice, "#chat-log", "the mute notice", |t| t.contains("(the class is muted)")).await;
    type_into(&alice, "#chat-input", "can anyone hear me").await;
    click(&alice, "#chat-send").await;
    wait_text(&alice, "#error-log", "the refusal", |t| t.starts_with("muted")).await;
    type_into(&teacher, "#chat-input", "quiet please").await;
    click(&teacher, "#chat-send").await;
    wait_text(&bob, "#chat-log", "the teacher's chat", |t| t.contains("1: quiet please")).await;
    let log = wait_text(&teacher, "#chat-log", "the teacher's log", |_| true).await;
    assert!(!log.contains("can anyone hear me"), "a muted student's chat went through");

    let png = teacher.screenshot().await.expect("screenshot");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).expect("target dir");
    std::fs::write(target.join("classroom-teacher.png"), png).expect("saved");

    // A student who arrives while a card is open sees it and can answer.
    click(&teacher, "#card-open").await;
    wait_text(&alice, "#card-buttons", "the second card at alice", |t| t.contains('A')).await;
    let carol = browser(&driver_url).await;
    carol.goto(&format!("{base}/?role=student&uin=103&room=42")).await.expect("carol page");
    wait_text(&carol, "#card-buttons", "the open card at a late joiner", |t| t.contains('D')).await;
    click(&carol, ".card-option[data-option='3']").await;
    wait_text(&carol, "#card-mine", "carol's own answer", |t| t == "D").await;
    wait_text(&teacher, "#card-tally", "carol's answer in the tally", |t| t == "0 / 0 / 0 / 1").await;

    // ... and a packet that is half taken: she sees it and grabs a share.
    type_into(&teacher, "#packet-amount", "90").await;
    type_into(&teacher, "#packet-count", "3").await;
    click(&teacher, "#packet-send").await;
    wait_text(&alice, "#packet-state", "the second packet at alice", |t| t.contains("90 in 3")).await;
    click(&alice, "#packet-grab").await;
    wait_text(&teacher, "#packet-state", "alice's share taken", |t| t.contains("taken by 1 of 3")).await;
    let dave = browser(&driver_url).await;
    dave.goto(&format!("{base}/?role=student&uin=104&room=42")).await.expect("dave page");
    wait_text(&dave, "#packet-state", "the half-taken packet at a late joiner", |t| t.contains("taken by 1 of 3"))
        .await;
    wait_text(&dave, "#card-buttons", "the open card at dave", |t| t.contains('D')).await;
    click(&dave, "#packet-grab").await;
    let share = wait_text(&dave, "#packet-grabbed", "dave's share", |t| t.starts_with("you got")).await;
    click(&dave, ".card-option[data-option='1']").await;
    wait_text(&dave, "#card-mine", "dave's own answer", |t| t == "B").await;
    click(&dave, "#hand-raise").await;
    wait_text(&teacher, "#hand-queue", "dave's hand", |t| t.contains("104")).await;
    // A reload finds the same view: his answer, his share, his hand up, and
    // the teacher still sees the hand.
    dave.refresh().await.expect("reload");
    wait_text(&dave, "#status", "dave back", |t| t == "connected").await;
    wait_text(&dave, "#card-mine", "dave's answer after the reload", |t| t == "B").await;
    wait_text(&dave, "#packet-grabbed", "dave's share after the reload", |t| t == share).await;
    wait_text(&dave, "#hand-state", "dave's hand after the reload", |t| t == "hand up").await;
    wait_text(&teacher, "#hand-queue", "dave's hand kept", |t| t.contains("104")).await;
    let _ = dave.close().await;

    // A second tab of the teacher replaces the first, which says so and
    // stays closed (the two never take turns).
    let before = entries(running.addr).await;
    let second = browser(&driver_url).await;
    second.goto(&format!("{base}/?role=teacher&uin=1&room=42")).await.expect("second tab");
    wait_text(&second, "#status", "the second tab connected", |t| t == "connected").await;
    wait_text(&teacher, "#status", "the first tab told", |t| t == "disconnected: opened in another tab").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    wait_text(&second, "#status", "the second tab still connected", |t| t == "connected").await;
    wait_text(&teacher, "#status", "the first tab still closed", |t| t.starts_with("disconnected")).await;
    // Two joins in all: the first tab's, long before, and the second's.
    assert_eq!(entries(running.addr).await - before, 1, "a tab reconnected after it was replaced");
    // The teacher's page fits a phone too.
    second.set_window_size(390, 800).await.expect("narrow window");
    let wide = second.execute("return document.documentElement.scrollWidth", vec![]).await.expect("width");
    assert!(wide.as_u64().is_some_and(|w| w <= 390), "the teacher's page is {wide} px wide at 390 px");

    // A phone: nothing wider than 390 px; the join screen shows no class.
    carol.set_window_size(390, 800).await.expect("narrow window");
    let wide = carol.execute("return document.documentElement.scrollWidth", vec![]).await.expect("width");
    assert!(wide.as_u64().is_some_and(|w| w <= 390), "the page is {wide} px wide at 390 px");
    let fresh = browser(&driver_url).await;
    fresh.goto(&base).await.expect("join screen");
    let class_shown = fresh.find(Locator::Css("#class")).await.expect("#class").is_displayed().await.expect("shown?");
    let form_shown = fresh.find(Locator::Css("#join")).await.expect("#join").is_displayed().await.expect("shown?");
    assert!(!class_shown && form_shown, "the join screen shows the form and no class");
    // Joining by the form, then reloading, comes back to the class as the
    // same member.
    type_into(&fresh, "#join-uin", "105").await;
    click(&fresh, "#join-go").await;
    wait_text(&fresh, "#status", "joined by the form", |t| t == "connected").await;
    fresh.refresh().await.expect("reload");
    wait_text(&fresh, "#status", "back after the reload", |t| t == "connected").await;
    let url = fresh.current_url().await.expect("url");
    assert!(url.as_str().contains("uin=105"), "the reload kept the member: {url}");
    wait_text(&second, "#members", "105 in the teacher's list", |t| t.contains("105")).await;
    for page in [carol, second, fresh] {
        let _ = page.close().await;
    }

    for page in [teacher, alice, bob] {
        let _ = page.close().await;
    }
}
