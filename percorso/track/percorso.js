/*! percorso.js — the browser tracker of percorso (https://github.com/percorso). MIT licence.
 *
 * Load it with the snippet (docs/tracker.md), which queues calls until this file arrives:
 *   percorso.load({ host: "https://percorso.example", writeKey: "wk_…", consent: "required" });
 *   percorso.page(); percorso.track("Signed Up", { plan: "pro" }); percorso.identify("u-42", { email });
 *
 * What it does, in order of a page's life:
 * - takes the calls the snippet queued, then serves them itself (analytics.js-shaped API);
 * - consent mode ("required"): nothing is stored on the device and nothing is sent until
 *   percorso.consent({ analytics: true }); refused, the queued calls are dropped;
 * - cookieless mode: the anonymous id lives in memory for one page, nothing is stored;
 * - an anonymous id chosen by the server (POST /v1/visitors) with a token that lets this browser
 *   read its own on-site messages, kept in localStorage and a first-party cookie;
 * - automatic page views, also for single-page-app navigation (history API), with referrer and
 *   UTM parameters;
 * - events sent in batches (fetch keepalive; sendBeacon when the page is hidden), kept in
 *   localStorage until the server answers, so what could not be sent goes after a reload;
 * - on-site messages the automations queued: a banner (or the element with
 *   data-percorso-slot), shown once, with dismiss; shown, clicked and dismissed come back as events;
 * - surveys (NPS, CSAT, CES, choice, open) by their page, device, event, delay and display rules,
 *   in English or Italian (the page's lang), answered to /v1/surveys/{key}/answers;
 * - heatmaps, where load({heatmaps}) asks for them: clicks, rage and dead clicks, scroll depth.
 */
(function (window, document) {
  "use strict";
  var VERSION = "1.0.0";
  var KEY = "percorso:";
  var MAX_BATCH = 20;
  var FLUSH_MS = 1000;
  var beaconed = ""; // the last batch handed to sendBeacon (its last messageId and length)
  var POLL_MS = 20000;
  var stub = window.percorso;
  if (stub && stub.initialized) return;
  var options = (stub && stub._options) || {};
  var queued = Array.isArray(stub) ? stub.slice() : [];

  var host = String(options.host || "").replace(/\/+$/, "");
  var writeKey = options.writeKey;
  var cookieless = !!options.cookieless;
  var consentRequired = options.consent === "required";
  var consent = { analytics: !consentRequired, marketing: null };
  var state = { anonymousId: null, token: null, userId: null };
  var outbox = []; // messages waiting to be sent
  var pending = []; // calls waiting for consent or for the anonymous id
  var readyCallbacks = [];
  var isReady = false;
  var timer = null;
  var lastPath = null;
  var shown = {};

  // -- storage (never touched before consent, never in cookieless mode) -----------------------
  function mayStore() {
    return consent.analytics && !cookieless;
  }
  function load(name) {
    if (!mayStore()) return null;
    try {
      var text = window.localStorage.getItem(KEY + name);
      return text ? JSON.parse(text) : null;
    } catch (e) {
      return null;
    }
  }
  function save(name, value) {
    if (!mayStore()) return;
    try {
      if (value === null) window.localStorage.removeItem(KEY + name);
      else window.localStorage.setItem(KEY + name, JSON.stringify(value));
    } catch (e) {
      /* storage full or blocked: the tracker works without it */
    }
  }
  function setCookie(value) {
    if (!mayStore()) return;
    var secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie =
      "percorso_id=" + (value ? encodeURIComponent(value) + "; Max-Age=31536000" : "; Max-Age=0") +
      "; Path=/; SameSite=Lax" + secure;
  }

  // -- identifiers ------------------------------------------------------------------------------
  function uuid() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    bytes[6] = (bytes[6] & 15) | 64;
    bytes[8] = (bytes[8] & 63) | 128;
    var hex = Array.prototype.map.call(bytes, function (b) { return (b + 256).toString(16).slice(1); }).join("");
    return hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-" + hex.slice(12, 16) + "-" + hex.slice(16, 20) + "-" + hex.slice(20);
  }
  function authorization() {
    return "Basic " + window.btoa(writeKey + ":");
  }
  function startVisitor() {
    var kept = load("visitor");
    if (kept && kept.anonymousId) {
      state.anonymousId = kept.anonymousId;
      state.token = kept.token || null;
      state.userId = kept.userId || null;
      becomeReady();
      return;
    }
    if (cookieless) {
      state.anonymousId = "m-" + uuid(); // this page only: nothing is kept
      becomeReady();
      return;
    }
    window
      .fetch(host + "/v1/visitors", { method: "POST", headers: { Authorization: authorization() } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .catch(function () { return null; })
      .then(function (visitor) {
        state.anonymousId = (visitor && visitor.anonymousId) || "l-" + uuid();
        state.token = (visitor && visitor.token) || null;
        remember();
        becomeReady();
      });
  }
  function remember() {
    save("visitor", { anonymousId: state.anonymousId, token: state.token, userId: state.userId });
    setCookie(state.anonymousId);
  }
  function becomeReady() {
    isReady = true;
    var calls = pending;
    pending = [];
    for (var i = 0; i < calls.length; i++) run(calls[i]);
    var callbacks = readyCallbacks;
    readyCallbacks = [];
    for (var j = 0; j < callbacks.length; j++) safely(callbacks[j]);
    resend();
    poll();
    askSurveys();
  }
  function safely(fn) {
    try { fn(); } catch (e) { /* a site's callback must not stop the tracker */ }
  }

  // -- context ----------------------------------------------------------------------------------
  var landing = parseCampaign(window.location.search);
  function parseCampaign(search) {
    var campaign = {};
    var params = new URLSearchParams(search || "");
    ["source", "medium", "name", "term", "content"].forEach(function (k) {
      var v = params.get("utm_" + (k === "name" ? "campaign" : k));
      if (v) campaign[k] = v;
    });
    return campaign;
  }
  function pageContext() {
    var loc = window.location;
    return {
      path: loc.pathname,
      url: loc.href.split("#")[0],
      search: loc.search,
      title: document.title,
      referrer: lastReferrer,
    };
  }
  var lastReferrer = document.referrer;
  function context() {
    var ctx = {
      library: { name: "percorso.js", version: VERSION },
      page: pageContext(),
      userAgent: window.navigator.userAgent,
      locale: window.navigator.language,
      screen: { width: window.screen.width, height: window.screen.height },
    };
    try { ctx.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { /* old browser */ }
    if (Object.keys(landing).length) ctx.campaign = landing;
    if (consentRequired) ctx.consent = { analytics: consent.analytics, marketing: consent.marketing };
    return ctx;
  }

  // -- sending ----------------------------------------------------------------------------------
  function enqueue(message, page) {
    message.messageId = "pjs-" + uuid();
    message.timestamp = new Date().toISOString();
    message.anonymousId = state.anonymousId;
    if (state.userId && !message.userId) message.userId = state.userId;
    message.context = context();
    if (page) message.context.page = page; // an event about a page already left
    outbox.push(message);
    save("outbox", outbox);
    if (outbox.length >= MAX_BATCH) flush(false);
    else if (!timer) timer = window.setTimeout(function () { flush(false); }, FLUSH_MS);
  }
  function flush(leaving) {
    if (timer) { window.clearTimeout(timer); timer = null; }
    if (!outbox.length || !consent.analytics) return;
    var batch = outbox.slice(0, MAX_BATCH * 5);
    var body = JSON.stringify({ batch: batch, sentAt: new Date().toISOString(), writeKey: writeKey });
    var url = host + "/v1/batch";
    if (leaving && window.navigator.sendBeacon) {
      // The page is going: the browser sends this after we are gone, and a beacon has no answer.
      // The batch stays stored: the next page sends it again and sees the answer; the server
      // stores each messageId once, so the second copy costs nothing. Hiding and leaving both
      // come here: the same batch goes once.
      var last = batch[batch.length - 1].messageId + "/" + batch.length;
      if (last === beaconed) return;
      beaconed = last;
      window.navigator.sendBeacon(url, new Blob([body], { type: "text/plain" }));
      return;
    }
    window
      .fetch(url, { method: "POST", body: body, keepalive: body.length < 60000, headers: { "Content-Type": "text/plain" } })
      .then(function (r) {
        // Stored, or refused for good (a 4xx other than 429): either way not to be sent again.
        if (r.ok || (r.status >= 400 && r.status < 500 && r.status !== 429)) sent(batch);
      })
      .catch(function () { /* offline: kept in storage, sent on the next page or flush */ });
  }
  function sent(batch) {
    var ids = {};
    batch.forEach(function (m) { ids[m.messageId] = true; });
    outbox = outbox.filter(function (m) { return !ids[m.messageId]; });
    save("outbox", outbox.length ? outbox : null);
  }
  function resend() {
    var kept = load("outbox");
    if (kept && kept.length) {
      var known = {};
      outbox.forEach(function (m) { known[m.messageId] = true; });
      outbox = kept.filter(function (m) { return !known[m.messageId]; }).concat(outbox);
      flush(false);
    }
  }

  // -- the API ----------------------------------------------------------------------------------
  function call(name, args) {
    var item = [name].concat(Array.prototype.slice.call(args));
    if (name === "ready" || name === "consent" || name === "reset") return run(item);
    if (!consent.analytics || !isReady) pending.push(item);
    else run(item);
  }
  function run(item) {
    var name = item[0];
    var a = item.slice(1);
    if (name === "page") {
      var props = typeof a[0] === "object" && a[0] ? a[0] : typeof a[1] === "object" && a[1] ? a[1] : a[2] || {};
      var pageName = typeof a[1] === "string" ? a[1] : typeof a[0] === "string" ? a[0] : undefined;
      var message = { type: "page", properties: Object.assign({}, pageContext(), props) };
      if (pageName) message.name = pageName;
      if (typeof a[0] === "string" && typeof a[1] === "string") message.category = a[0];
      lastPath = window.location.pathname + window.location.search;
      enqueue(message);
      poll();
      considerSurveys();
      startHeatmaps();
    } else if (name === "track") {
      enqueue({ type: "track", event: String(a[0]), properties: a[1] || {} });
      happened(String(a[0]));
    } else if (name === "identify") {
      var userId = typeof a[0] === "string" || typeof a[0] === "number" ? String(a[0]) : null;
      var traits = (userId ? a[1] : a[0]) || {};
      if (userId) { state.userId = userId; remember(); }
      enqueue({ type: "identify", userId: userId || undefined, traits: traits });
    } else if (name === "group") {
      enqueue({ type: "group", groupId: String(a[0]), traits: a[1] || {} });
    } else if (name === "alias") {
      var previous = a[1] ? String(a[1]) : state.userId || state.anonymousId;
      state.userId = String(a[0]);
      remember();
      enqueue({ type: "alias", userId: String(a[0]), previousId: previous });
    } else if (name === "reset") {
      state = { anonymousId: null, token: null, userId: null };
      save("visitor", null);
      setCookie(null);
      isReady = false;
      if (consent.analytics) startVisitor();
    } else if (name === "ready") {
      if (isReady) safely(a[0]);
      else readyCallbacks.push(a[0]);
    } else if (name === "consent") {
      giveConsent(a[0] || {});
    }
  }
  function giveConsent(given) {
    var before = consent.analytics;
    consent = { analytics: !!given.analytics, marketing: given.marketing === undefined ? null : !!given.marketing };
    if (!consent.analytics) {
      pending = [];
      outbox = [];
      return;
    }
    if (!before) startVisitor();
    if (consent.marketing !== null) {
      pending.push(["identify", { marketing_consent: consent.marketing }]);
      if (isReady) becomeReady();
    }
  }

  // -- automatic page views ---------------------------------------------------------------------
  function watchNavigation() {
    function changed() {
      var now = window.location.pathname + window.location.search;
      if (now === lastPath) return;
      lastReferrer = window.location.origin + (lastPath || "");
      api.page();
    }
    ["pushState", "replaceState"].forEach(function (method) {
      var original = window.history[method];
      window.history[method] = function () {
        var result = original.apply(this, arguments);
        window.setTimeout(changed, 0);
        return result;
      };
    });
    window.addEventListener("popstate", changed);
  }

  // -- on-site messages -------------------------------------------------------------------------
  var polling = null;
  function poll() {
    if (!state.token || !consent.analytics || polling) return;
    polling = window
      .fetch(host + "/v1/messages?token=" + encodeURIComponent(state.token), { headers: { Authorization: authorization() } })
      .then(function (r) { return r.ok ? r.json() : { messages: [] }; })
      .catch(function () { return { messages: [] }; })
      .then(function (answer) {
        polling = null;
        (answer.messages || []).forEach(show);
      });
  }
  var waiting = []; // banners wait their turn: one at a time at the bottom of the page
  var current = null;
  function next() {
    current = null;
    if (waiting.length) show(waiting.shift());
  }
  function show(message) {
    if (shown[message.id] === true) return;
    var slot = document.querySelector("[data-percorso-slot]");
    if (!slot && current) {
      if (!shown[message.id]) waiting.push(message);
      shown[message.id] = "waiting";
      return;
    }
    shown[message.id] = true;
    var about = { message_id: message.id, automation: message.automation, step: message.step };
    var box = document.createElement("div");
    box.className = "percorso-message";
    box.setAttribute("role", "status");
    box.setAttribute("data-percorso-message", message.id);
    if (!slot) {
      box.style.cssText =
        "position:fixed;left:16px;right:16px;bottom:16px;z-index:2147483000;max-width:560px;margin:0 auto;" +
        "background:#fff;color:#1d1d1f;border:1px solid #d0d0d7;border-radius:8px;padding:16px 44px 16px 16px;" +
        "box-shadow:0 6px 24px rgba(0,0,0,.15);font:15px/1.4 system-ui,sans-serif";
    }
    var title = document.createElement("strong");
    title.textContent = message.title || "";
    var body = document.createElement("p");
    body.style.margin = "6px 0 0";
    body.textContent = message.body || "";
    box.appendChild(title);
    box.appendChild(body);
    if (message.cta_url) {
      var link = document.createElement("a");
      link.href = /^(https?:|\/)/i.test(message.cta_url) ? message.cta_url : "#";
      link.textContent = message.cta_text || message.cta_url;
      link.style.cssText = "display:inline-block;margin-top:8px";
      link.addEventListener("click", function () {
        api.track("Onsite Message Clicked", Object.assign({ url: message.cta_url }, about));
        flush(true);
        remove();
      });
      box.appendChild(link);
    }
    var close = document.createElement("button");
    close.type = "button";
    close.setAttribute("aria-label", "×");
    close.textContent = "×";
    close.style.cssText = "position:absolute;top:8px;right:10px;border:0;background:none;font-size:20px;cursor:pointer";
    if (!slot) box.appendChild(close);
    close.addEventListener("click", function () {
      remove();
      api.track("Onsite Message Dismissed", about);
    });
    function remove() {
      if (box.parentNode) box.parentNode.removeChild(box);
      if (current === box) next();
    }
    if (!slot) current = box;
    (slot || document.body).appendChild(box);
    api.track("Onsite Message Shown", about);
  }

  // -- surveys ----------------------------------------------------------------------------------
  // The server says which surveys this visitor may see (once per contact or every N days, the
  // sample, stop after N answers); the page, the device, the event that opens one, the delay and
  // "not twice in one visit" are checked here.
  var TEXT = {
    en: { send: "Send", thanks: "Thank you!", close: "Close", low: "Not at all likely", high: "Extremely likely",
          lowCsat: "Very unsatisfied", highCsat: "Very satisfied", lowCes: "Very difficult", highCes: "Very easy" },
    it: { send: "Invia", thanks: "Grazie!", close: "Chiudi", low: "Per niente probabile", high: "Estremamente probabile",
          lowCsat: "Per niente soddisfatto", highCsat: "Molto soddisfatto", lowCes: "Molto difficile", highCes: "Molto facile" },
  };
  var SCALE = { nps: [0, 10, "low", "high"], csat: [1, 5, "lowCsat", "highCsat"], ces: [1, 7, "lowCes", "highCes"] };
  var candidates = [];
  var events = {};
  var surveyOpen = false;
  function language() {
    var lang = (document.documentElement.lang || window.navigator.language || "en").slice(0, 2).toLowerCase();
    return lang === "it" ? "it" : "en";
  }
  function words(name) {
    if (!name) return "";
    if (typeof name === "string") return name;
    return (language() === "it" && name.it) || name.en;
  }
  function device() {
    var width = window.innerWidth;
    return width < 768 ? "mobile" : width < 1024 ? "tablet" : "desktop";
  }
  function globMatch(pattern, path) {
    var re = new RegExp("^" + pattern.split("*").map(function (p) { return p.replace(/[.+?^${}()|[\]\\]/g, "\\$&"); }).join(".*") + "$");
    return re.test(path);
  }
  function seenThisVisit(key) {
    try { return (window.sessionStorage.getItem(KEY + "surveys") || "").split(" ").indexOf(key) >= 0; } catch (e) { return false; }
  }
  function markSeen(key) {
    if (!mayStore()) return;
    try {
      var seen = (window.sessionStorage.getItem(KEY + "surveys") || "") + " " + key;
      window.sessionStorage.setItem(KEY + "surveys", seen.trim());
    } catch (e) { /* storage blocked */ }
  }
  function askSurveys() {
    if (!state.token || !consent.analytics) return;
    window
      .fetch(host + "/v1/visitors/surveys?token=" + encodeURIComponent(state.token), { headers: { Authorization: authorization() } })
      .then(function (r) { return r.ok ? r.json() : { surveys: [] }; })
      .catch(function () { return { surveys: [] }; })
      .then(function (answer) {
        candidates = answer.surveys || [];
        considerSurveys();
      });
  }
  function happened(event) {
    events[event] = true;
    considerSurveys();
  }
  function considerSurveys() {
    if (surveyOpen) return;
    var path = window.location.pathname;
    for (var i = 0; i < candidates.length; i++) {
      var survey = candidates[i];
      var target = survey.target || {};
      if (seenThisVisit(survey.key) || survey.pending) continue;
      if (target.pages && target.pages.length && !target.pages.some(function (p) { return globMatch(p, path); })) continue;
      if (target.devices && target.devices.length && target.devices.indexOf(device()) < 0) continue;
      if (target.event && !events[target.event]) continue;
      survey.pending = true;
      window.setTimeout(openSurvey.bind(null, survey), (survey.delay || 0) * 1000);
      return;
    }
  }
  function openSurvey(survey) {
    if (surveyOpen) return;
    surveyOpen = true;
    markSeen(survey.key);
    candidates = candidates.filter(function (s) { return s.key !== survey.key; });
    var t = TEXT[language()];
    var chosen = {};
    var box = document.createElement("form");
    box.className = "percorso-survey";
    box.setAttribute("data-percorso-survey", survey.key);
    box.setAttribute("lang", language());
    box.style.cssText =
      "position:fixed;right:16px;bottom:16px;z-index:2147483001;width:min(420px,calc(100% - 32px));background:#fff;" +
      "color:#1d1d1f;border:1px solid #d0d0d7;border-radius:8px;padding:16px;box-shadow:0 6px 24px rgba(0,0,0,.15);" +
      "font:15px/1.4 system-ui,sans-serif";
    survey.questions.forEach(function (q) {
      var block = document.createElement("fieldset");
      block.style.cssText = "border:0;margin:0 0 12px;padding:0";
      var legend = document.createElement("legend");
      legend.textContent = words(q.text);
      legend.style.cssText = "font-weight:600;margin-bottom:6px";
      block.appendChild(legend);
      if (SCALE[q.kind]) {
        var scale = SCALE[q.kind];
        var row = document.createElement("div");
        row.style.cssText = "display:flex;flex-wrap:wrap;gap:4px";
        for (var v = scale[0]; v <= scale[1]; v++) {
          row.appendChild(choiceButton(q.id, v, String(v), chosen, row));
        }
        block.appendChild(row);
        var ends = document.createElement("div");
        ends.style.cssText = "display:flex;justify-content:space-between;font-size:12px;color:#555";
        [t[scale[2]], t[scale[3]]].forEach(function (label) {
          var span = document.createElement("span");
          span.textContent = label;
          ends.appendChild(span);
        });
        block.appendChild(ends);
      } else if (q.kind === "choice") {
        var options = document.createElement("div");
        options.style.cssText = "display:flex;flex-wrap:wrap;gap:4px";
        (q.options || []).forEach(function (option) {
          var value = typeof option === "string" ? option : option.en;
          options.appendChild(choiceButton(q.id, value, words(option), chosen, options));
        });
        block.appendChild(options);
      } else {
        var area = document.createElement("textarea");
        area.name = q.id;
        area.rows = 3;
        area.maxLength = 2000;
        area.style.cssText = "width:100%;box-sizing:border-box";
        area.addEventListener("input", function () { chosen[q.id] = area.value; });
        block.appendChild(area);
      }
      box.appendChild(block);
    });
    var send = document.createElement("button");
    send.type = "submit";
    send.textContent = t.send;
    var close = document.createElement("button");
    close.type = "button";
    close.textContent = "×";
    close.setAttribute("aria-label", t.close);
    close.style.cssText = "position:absolute;top:6px;right:8px;border:0;background:none;font-size:20px;cursor:pointer";
    box.appendChild(send);
    box.appendChild(close);
    function done() {
      if (box.parentNode) box.parentNode.removeChild(box);
      surveyOpen = false;
      considerSurveys();
    }
    close.addEventListener("click", function () {
      api.track("Survey Dismissed", { survey: survey.key });
      done();
    });
    box.addEventListener("submit", function (e) {
      e.preventDefault();
      var page = window.location.pathname;
      window
        .fetch(host + "/v1/surveys/" + survey.key + "/answers", {
          method: "POST",
          headers: { Authorization: authorization(), "Content-Type": "application/json" },
          body: JSON.stringify({ token: state.token, answers: chosen, page: page }),
        })
        .then(function (r) {
          if (!r.ok) return;
          box.textContent = t.thanks;
          window.setTimeout(done, 1500);
        })
        .catch(function () { /* offline: the survey stays open to try again */ });
    });
    document.body.appendChild(box);
    api.track("Survey Shown", { survey: survey.key });
  }
  function choiceButton(question, value, label, chosen, group) {
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.setAttribute("data-value", String(value));
    button.setAttribute("aria-pressed", "false");
    button.style.cssText = "min-width:32px;padding:4px 6px;border:1px solid #aaa;border-radius:4px;background:#f6f6f8;cursor:pointer";
    button.addEventListener("click", function () {
      chosen[question] = value;
      Array.prototype.forEach.call(group.children, function (b) {
        b.setAttribute("aria-pressed", "false");
        b.style.background = "#f6f6f8";
      });
      button.setAttribute("aria-pressed", "true");
      button.style.background = "#cfe3ff";
    });
    return button;
  }

  // -- heatmaps ---------------------------------------------------------------------------------
  // With load({heatmaps: {pages: ["/checkout*"], sample: 50}}): every click on those pages (the
  // element's selector, where in the element and in the page, the viewport band), rage clicks
  // (three within 700 ms in one spot) and dead clicks (on nothing that reacts: no link or control,
  // and the page did not change within half a second), and how far the page was scrolled.
  var heat = options.heatmaps || null;
  var heatOn = false;
  var recent = [];
  var deepest = 0;
  function heatmapsHere() {
    if (!heat) return false;
    var pages = heat.pages || ["*"];
    return pages.some(function (p) { return globMatch(p, window.location.pathname); });
  }
  function sampled() {
    var share = heat && heat.sample !== undefined ? Number(heat.sample) : 100;
    var id = state.anonymousId || "";
    var h = 0;
    for (var i = 0; i < id.length; i++) h = (h * 31 + id.charCodeAt(i)) >>> 0;
    return (h % 10000) / 100 < share;
  }
  function selectorOf(el) {
    var parts = [];
    while (el && el.nodeType === 1 && parts.length < 5) {
      if (el.id) { parts.unshift("#" + el.id); break; }
      var part = el.tagName.toLowerCase();
      var cls = (typeof el.className === "string" ? el.className : "").trim().split(/\s+/)[0];
      if (cls) part += "." + cls;
      var parent = el.parentElement;
      if (parent) {
        var same = Array.prototype.filter.call(parent.children, function (c) { return c.tagName === el.tagName; });
        if (same.length > 1) part += ":nth-of-type(" + (same.indexOf(el) + 1) + ")";
      }
      parts.unshift(part);
      el = parent;
    }
    return parts.join(" > ").slice(0, 300);
  }
  var INTERACTIVE = "a,button,input,select,textarea,label,summary,[role=button],[role=link],[onclick],[tabindex],[contenteditable]";
  function onClick(e) {
    if (!heatOn || !e.target || e.target.nodeType !== 1) return;
    var el = e.target;
    if (el.closest && el.closest(".percorso-message,.percorso-survey")) return; // our own widgets
    var box = el.getBoundingClientRect();
    var doc = document.documentElement;
    var x = Math.round(e.pageX), y = Math.round(e.pageY);
    var now = Date.now();
    recent = recent.filter(function (c) { return now - c.t < 700 && Math.abs(c.x - x) < 30 && Math.abs(c.y - y) < 30; });
    recent.push({ t: now, x: x, y: y });
    var props = {
      selector: selectorOf(el),
      x: x,
      y: y,
      width: Math.max(doc.scrollWidth, 1),
      height: Math.max(doc.scrollHeight, 1),
      rx: box.width ? Math.round(((e.clientX - box.left) / box.width) * 1000) / 1000 : 0,
      ry: box.height ? Math.round(((e.clientY - box.top) / box.height) * 1000) / 1000 : 0,
      band: device(),
      rage: recent.length >= 3,
    };
    if (el.closest && el.closest(INTERACTIVE)) {
      props.dead = false;
      api.track("Heatmap Click", props);
      return;
    }
    // Dead or not: did anything change on the page within half a second?
    var changed = false;
    var watcher = new MutationObserver(function () { changed = true; });
    watcher.observe(document.body, { childList: true, subtree: true, attributes: true, characterData: true });
    var at = window.location.href;
    window.setTimeout(function () {
      watcher.disconnect();
      props.dead = !changed && window.location.href === at;
      api.track("Heatmap Click", props);
    }, 500);
  }
  function onScroll() {
    if (!heatOn) return;
    var doc = document.documentElement;
    var depth = Math.round(((window.scrollY + window.innerHeight) / Math.max(doc.scrollHeight, 1)) * 100);
    if (depth > deepest) deepest = Math.min(depth, 100);
  }
  var heatPage = null;
  function reportScroll() {
    if (!heatOn || !deepest || !consent.analytics) return;
    enqueue({ type: "track", event: "Page Scrolled", properties: { depth: deepest, band: device() } }, heatPage);
    deepest = 0;
  }
  function startHeatmaps() {
    reportScroll(); // the page being left (single-page apps): counted for that page
    heatOn = heatmapsHere() && sampled();
    heatPage = pageContext();
    if (heatOn) onScroll();
  }
  document.addEventListener("click", onClick, true);
  window.addEventListener("scroll", onScroll, { passive: true });

  // -- start --------------------------------------------------------------------------------------
  var api = {
    initialized: true,
    VERSION: VERSION,
    page: function () { call("page", arguments); return api; },
    track: function () { call("track", arguments); return api; },
    identify: function () { call("identify", arguments); return api; },
    group: function () { call("group", arguments); return api; },
    alias: function () { call("alias", arguments); return api; },
    reset: function () { call("reset", arguments); return api; },
    ready: function () { call("ready", arguments); return api; },
    consent: function () { call("consent", arguments); return api; },
    flush: function () { flush(false); return api; },
    user: function () { return { anonymousId: state.anonymousId, userId: state.userId }; },
    load: function () { return api; },
  };
  window.percorso = api;
  if (!host || !writeKey) {
    if (window.console) window.console.warn("percorso.js: percorso.load({ host, writeKey }) is required");
    return;
  }
  if (consent.analytics) startVisitor();
  watchNavigation();
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") { reportScroll(); flush(true); }
    else poll();
  });
  window.addEventListener("pagehide", function () { reportScroll(); flush(true); });
  window.setInterval(poll, POLL_MS);
  for (var i = 0; i < queued.length; i++) {
    var q = queued[i];
    if (q && q.length) call(q[0], q.slice(1));
  }
  if (options.page !== false && !queued.some(function (q) { return q && q[0] === "page"; })) api.page();
})(window, document);
