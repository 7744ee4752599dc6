//! The rule catalog: every detection rule the engine knows, as data.
//!
//! A rule is either *anchored* — it has a rare literal that the prefilter finds, and a small
//! regex confirms the match in a window around that literal — or *built in*, for shapes that
//! have no literal at all (card numbers, IBANs, seed phrases, generic high-entropy values),
//! which the token pass in [`crate::runs`] finds.
//!
//! Each rule carries its own examples: `examples` are templates that must fire, `near_misses`
//! must not. The templates use `{class:len}` placeholders that [`crate::template`] expands
//! deterministically, so the tests, the corpus generator and the docs share one source of truth
//! without a single real secret in the tree.

use crate::{Action, Severity};

/// How a match is confirmed after the prefilter or the token pass found a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Validator {
    None,
    /// The confirmed value (capture group 1 if any, else the match) must look random.
    Entropy { min_bits_per_byte: f32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    CreditCard,
    Iban,
    BitcoinWif,
    Bip39Seed,
    GenericSecret,
    TwilioApiKey,
    DiscordBotToken,
    Canary,
    InjectionOverride,
    InjectionRoleToken,
    InjectionHidden,
    DecompressionBomb,
    DecodeLimit,
    UrlScheme,
    UrlCrlf,
    UrlTraversal,
    UrlSsrf,
    UrlLength,
    UrlEntropy,
    DnsLabelExfil,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Detector {
    Anchored {
        /// Literals the prefilter looks for; the anchor must lie inside the confirmed match.
        anchors: &'static [&'static str],
        /// Byte regex, `(?-u)` implied. Capture group 1, if present, is the part to redact.
        pattern: &'static str,
        /// How far before the anchor the match may start.
        lookbehind: usize,
        /// Upper bound of a match's length; bounds the confirmation window and the stream overlap.
        max_len: usize,
        /// The byte before the match must not be alphanumeric.
        bound_left: bool,
        /// The byte after the match must not continue the token.
        bound_right: bool,
        validator: Validator,
    },
    Builtin(Builtin),
}

/// Where a rule may fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Egress: URLs, request headers and request bodies (and everything for canaries).
    Egress,
    /// Responses only (prompt injection).
    Ingress,
    /// Any direction (engine limits).
    Any,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct RuleDef {
    pub id: &'static str,
    pub title: &'static str,
    pub severity: Severity,
    /// Action under the balanced preset.
    pub action: Action,
    /// Off by default; enable with an override.
    pub optional: bool,
    pub scope: Scope,
    pub detector: Detector,
    pub examples: &'static [&'static str],
    pub near_misses: &'static [&'static str],
}

const fn anchored(
    anchors: &'static [&'static str],
    pattern: &'static str,
    max_len: usize,
) -> Detector {
    Detector::Anchored {
        anchors,
        pattern,
        lookbehind: 0,
        max_len,
        bound_left: true,
        bound_right: true,
        validator: Validator::None,
    }
}

const fn keyed(
    anchors: &'static [&'static str],
    pattern: &'static str,
    lookbehind: usize,
    max_len: usize,
    min_bits_per_byte: f32,
) -> Detector {
    Detector::Anchored {
        anchors,
        pattern,
        lookbehind,
        max_len,
        bound_left: false,
        bound_right: false,
        validator: Validator::Entropy { min_bits_per_byte },
    }
}

use Action::{Audit, Block, Redact};
use Severity::{Critical, High, Low, Medium};

macro_rules! rule {
    ($id:literal, $title:literal, $sev:expr, $act:expr, $det:expr, [$($ex:literal),* $(,)?], [$($nm:literal),* $(,)?]) => {
        RuleDef { id: $id, title: $title, severity: $sev, action: $act, optional: false, scope: Scope::Egress,
                  detector: $det, examples: &[$($ex),*], near_misses: &[$($nm),*] }
    };
}

/// The rule set. Order matters only for reporting: when two rules claim the same bytes the
/// earlier one wins.
pub(crate) static RULES: &[RuleDef] = &[
    RuleDef {
        id: "canary",
        title: "Canary token configured for this bottle",
        severity: Critical,
        action: Block,
        optional: false,
        scope: Scope::Any,
        detector: Detector::Builtin(Builtin::Canary),
        examples: &[],
        near_misses: &[],
    },
    // --- cloud providers -------------------------------------------------------------------
    rule!("aws.access_key_id", "AWS access key ID", Critical, Block,
        anchored(&["AKIA", "ASIA", "ABIA", "ACCA"], r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}", 20),
        ["AKIA{u:16}", "aws_access_key_id=ASIA{u:16}"],
        ["AKIAIOSFODNN7EXAMPLE", "AKIA{u:12}", "xAKIA{u:16}", "AKIA{u:16}{u:4}"]),
    rule!("aws.secret_access_key", "AWS secret access key", Critical, Block,
        keyed(&["aws_secret", "AWS_SECRET", "SecretAccessKey", "secret_access_key", "SECRET_ACCESS_KEY"],
            r#"(?i)(?:aws_?secret_?(?:access_?)?key|secretaccesskey|secret_access_key)["']?\s*[:=]\s*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+]|$)"#,
            8, 90, 3.5),
        ["aws_secret_access_key = {b:40}", "\"SecretAccessKey\": \"{b:40}\"", "AWS_SECRET_ACCESS_KEY={b:40}"],
        ["aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_access_key = aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "aws_secret_access_key = {b:30}"]),
    rule!("aws.mws_key", "Amazon MWS auth token", High, Block,
        anchored(&["amzn.mws."], r"amzn\.mws\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", 45),
        ["amzn.mws.{h:8}-{h:4}-{h:4}-{h:4}-{h:12}"], ["amzn.mws.{h:8}"]),
    rule!("gcp.service_account_key", "Google Cloud service-account key file", Critical, Block,
        Detector::Anchored { anchors: &["service_account"], pattern: r#""type"\s*:\s*"service_account""#, lookbehind: 24, max_len: 48,
            bound_left: false, bound_right: false, validator: Validator::None },
        ["{\"type\": \"service_account\", \"project_id\": \"p-{l:8}\"}"], ["{\"type\": \"user_account\"}", "service_account is a word"]),
    rule!("gcp.api_key", "Google API key", High, Block,
        anchored(&["AIza"], r"AIza[0-9A-Za-z_\-]{35}", 39),
        ["AIza{s:35}", "key=AIza{s:35}&q=1"], ["AIza{s:20}", "AIzaSy"]),
    rule!("gcp.oauth_client_secret", "Google OAuth client secret", High, Block,
        anchored(&["GOCSPX-"], r"GOCSPX-[0-9A-Za-z_\-]{28}", 35),
        ["GOCSPX-{s:28}"], ["GOCSPX-{s:10}"]),
    rule!("azure.storage_account_key", "Azure storage account key", Critical, Block,
        Detector::Anchored { anchors: &["AccountKey="], pattern: r"AccountKey=([A-Za-z0-9+/]{86}==)", lookbehind: 0, max_len: 101,
            bound_left: false, bound_right: false, validator: Validator::None },
        ["DefaultEndpointsProtocol=https;AccountName=x;AccountKey={b:86}==;EndpointSuffix=core.windows.net"], ["AccountKey={b:40}"]),
    rule!("azure.sas_token", "Azure shared access signature", High, Block,
        Detector::Anchored { anchors: &["sv=20"], pattern: r#"sv=20\d\d-\d\d-\d\d[^\s"'<>]{0,400}?[?&]sig=([A-Za-z0-9%+/]{30,}(?:%3[Dd]|=){0,2})"#, lookbehind: 0, max_len: 600,
            bound_left: false, bound_right: false, validator: Validator::None },
        ["https://acct.blob.core.windows.net/c/f?sv=2022-11-02&ss=b&srt=o&sp=r&se=2030-01-01T00:00:00Z&sig={b:43}%3D"],
        ["https://x.test/?sv=2022-11-02&sig=short"]),
    rule!("azure.ad_client_secret", "Azure AD client secret", High, Block,
        Detector::Anchored { anchors: &["Q~"], pattern: r"[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.\-]{31,34}", lookbehind: 4, max_len: 40,
            bound_left: true, bound_right: true, validator: Validator::Entropy { min_bits_per_byte: 3.5 } },
        ["abc8Q~{a:34}"], ["Q~ hello", "abc8Q~aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]),
    rule!("digitalocean.token", "DigitalOcean token", High, Block,
        anchored(&["dop_v1_", "doo_v1_", "dor_v1_"], r"do[opr]_v1_[a-f0-9]{64}", 71),
        ["dop_v1_{h:64}"], ["dop_v1_{h:20}"]),
    rule!("flyio.token", "Fly.io access token", High, Block,
        anchored(&["fo1_"], r"fo1_[A-Za-z0-9_\-]{43}", 47),
        ["fo1_{s:43}"], ["fo1_{s:10}"]),
    rule!("vault.token", "HashiCorp Vault token", Critical, Block,
        anchored(&["hvs.", "hvb."], r"hv[sb]\.[A-Za-z0-9_\-]{90,200}", 204),
        ["hvs.{s:92}"], ["hvs.{s:20}"]),
    rule!("terraform.api_token", "Terraform Cloud API token", High, Block,
        Detector::Anchored { anchors: &[".atlasv1."], pattern: r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=\-]{60,70}", lookbehind: 14, max_len: 94,
            bound_left: true, bound_right: true, validator: Validator::None },
        ["{a:14}.atlasv1.{s:67}"], ["x.atlasv1.y"]),
    rule!("pulumi.token", "Pulumi access token", High, Block,
        anchored(&["pul-"], r"pul-[a-f0-9]{40}", 44),
        ["pul-{h:40}"], ["pul-{h:12}"]),
    // --- source hosting ---------------------------------------------------------------------
    rule!("github.pat_classic", "GitHub classic personal access token", Critical, Block,
        anchored(&["ghp_"], r"ghp_[A-Za-z0-9]{36}", 40),
        ["ghp_{a:36}", "token ghp_{a:36}\n"], ["ghp_{a:20}", "ghp_{a:36}{a:3}"]),
    rule!("github.pat_fine_grained", "GitHub fine-grained personal access token", Critical, Block,
        anchored(&["github_pat_"], r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}", 93),
        ["github_pat_{a:22}_{a:59}"], ["github_pat_{a:22}"]),
    rule!("github.oauth_token", "GitHub OAuth access token", Critical, Block,
        anchored(&["gho_"], r"gho_[A-Za-z0-9]{36}", 40), ["gho_{a:36}"], ["gho_{a:12}"]),
    rule!("github.app_user_token", "GitHub App user-to-server token", Critical, Block,
        anchored(&["ghu_"], r"ghu_[A-Za-z0-9]{36}", 40), ["ghu_{a:36}"], ["ghu_{a:12}"]),
    rule!("github.app_installation_token", "GitHub App installation token", Critical, Block,
        anchored(&["ghs_"], r"ghs_[A-Za-z0-9]{36}", 40), ["ghs_{a:36}"], ["ghs_{a:12}"]),
    rule!("github.refresh_token", "GitHub refresh token", Critical, Block,
        anchored(&["ghr_"], r"ghr_[A-Za-z0-9]{36,76}", 80), ["ghr_{a:76}"], ["ghr_{a:12}"]),
    rule!("gitlab.pat", "GitLab personal access token", Critical, Block,
        anchored(&["glpat-"], r"glpat-[A-Za-z0-9_\-]{20,40}", 46), ["glpat-{s:20}"], ["glpat-{s:8}"]),
    rule!("gitlab.pipeline_trigger_token", "GitLab pipeline trigger token", High, Block,
        anchored(&["glptt-"], r"glptt-[0-9a-f]{40}", 46), ["glptt-{h:40}"], ["glptt-{h:8}"]),
    rule!("gitlab.runner_token", "GitLab runner authentication token", High, Block,
        anchored(&["glrt-"], r"glrt-[A-Za-z0-9_\-]{20,40}", 45), ["glrt-{s:20}"], ["glrt-{s:5}"]),
    rule!("atlassian.api_token", "Atlassian API token", High, Block,
        anchored(&["ATATT3"], r"ATATT3[A-Za-z0-9_\-=]{150,250}", 256), ["ATATT3{s:186}"], ["ATATT3{s:20}"]),
    rule!("linear.api_key", "Linear API key", High, Block,
        anchored(&["lin_api_"], r"lin_api_[A-Za-z0-9]{40}", 48), ["lin_api_{a:40}"], ["lin_api_{a:10}"]),
    // --- chat and messaging -----------------------------------------------------------------
    rule!("slack.bot_token", "Slack bot token", Critical, Block,
        anchored(&["xoxb-"], r"xoxb-[0-9]{10,13}-[0-9]{10,13}-[A-Za-z0-9]{24,34}", 70),
        ["xoxb-{d:12}-{d:13}-{a:24}"], ["xoxb-123-456-abc"]),
    rule!("slack.user_token", "Slack user token", Critical, Block,
        anchored(&["xoxp-"], r"xoxp-[0-9]{10,13}-[0-9]{10,13}-[0-9]{10,13}-[a-f0-9]{32}", 90),
        ["xoxp-{d:12}-{d:12}-{d:12}-{h:32}"], ["xoxp-1-2-3-4"]),
    rule!("slack.legacy_token", "Slack legacy or workspace token", High, Block,
        anchored(&["xoxa-", "xoxo-", "xoxr-", "xoxs-", "xoxe-"], r"xox[aorse]-(?:\d-)?[0-9A-Za-z\-]{20,150}", 160),
        ["xoxe-1-{a:140}", "xoxa-{d:10}-{a:20}"], ["xoxa-short"]),
    rule!("slack.app_token", "Slack app-level token", High, Block,
        anchored(&["xapp-"], r"xapp-\d-[A-Z0-9]{9,12}-\d{10,14}-[a-f0-9]{64}", 100),
        ["xapp-1-{u:11}-{d:13}-{h:64}"], ["xapp-1-abc"]),
    rule!("slack.webhook_url", "Slack incoming webhook URL", High, Block,
        anchored(&["hooks.slack.com/"], r"hooks\.slack\.com/(?:services|workflows|triggers)/T[A-Z0-9]{8,12}/B[A-Z0-9]{8,12}/[A-Za-z0-9]{24}", 90),
        ["https://hooks.slack.com/services/T{u:10}/B{u:10}/{a:24}"], ["https://hooks.slack.com/services/"]),
    rule!("discord.webhook_url", "Discord webhook URL", High, Block,
        Detector::Anchored { anchors: &["/api/webhooks/"], pattern: r"discord(?:app)?\.com/api/webhooks/[0-9]{17,20}/[A-Za-z0-9_\-]{60,68}", lookbehind: 16, max_len: 110,
            bound_left: false, bound_right: true, validator: Validator::None },
        ["https://discord.com/api/webhooks/{d:18}/{s:68}"], ["https://example.com/api/webhooks/1/2"]),
    rule!("discord.bot_token", "Discord bot token", High, Block,
        Detector::Builtin(Builtin::DiscordBotToken),
        ["MT{s:22}.{s:6}.{s:38}"], ["a.b.c", "MT{s:22}.{s:6}"]),
    rule!("telegram.bot_token", "Telegram bot token", High, Block,
        Detector::Anchored { anchors: &[":AA"], pattern: r"[0-9]{8,10}:AA[A-Za-z0-9_\-]{33}", lookbehind: 10, max_len: 46,
            bound_left: false, bound_right: true, validator: Validator::None },
        ["bot{d:10}:AA{s:33}/getMe"], ["12:AAbc", "time 10:AA"]),
    rule!("twilio.api_key", "Twilio API key", High, Block,
        Detector::Builtin(Builtin::TwilioApiKey), ["SK{h:32}"], ["SK{h:20}", "SKYLINE_ROOFING_AND_SIDING_COMPANY_LTD"]),
    rule!("sendgrid.api_key", "SendGrid API key", High, Block,
        anchored(&["SG."], r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}", 69), ["SG.{s:22}.{s:43}"], ["SG.com", "SG.{s:22}"]),
    rule!("mailgun.api_key", "Mailgun API key", High, Block,
        anchored(&["key-"], r"key-[0-9a-f]{32}", 36), ["key-{h:32}"], ["key-value", "api-key-{h:10}"]),
    rule!("mailchimp.api_key", "Mailchimp API key", High, Block,
        Detector::Anchored { anchors: &["-us"], pattern: r"[0-9a-f]{32}-us[0-9]{1,2}", lookbehind: 32, max_len: 37,
            bound_left: true, bound_right: true, validator: Validator::None },
        ["{h:32}-us14"], ["en-us", "{h:12}-us1"]),
    // --- payments and commerce --------------------------------------------------------------
    rule!("stripe.secret_key", "Stripe live secret key", Critical, Block,
        anchored(&["sk_live_"], r"sk_live_[0-9A-Za-z]{24,99}", 107), ["sk_live_{a:24}", "sk_live_{a:99}"], ["sk_live_{a:8}"]),
    rule!("stripe.restricted_key", "Stripe live restricted key", Critical, Block,
        anchored(&["rk_live_"], r"rk_live_[0-9A-Za-z]{24,99}", 107), ["rk_live_{a:24}"], ["rk_live_{a:8}"]),
    rule!("stripe.test_key", "Stripe test secret key", Low, Audit,
        anchored(&["sk_test_", "rk_test_"], r"[sr]k_test_[0-9A-Za-z]{24,99}", 107), ["sk_test_{a:24}"], ["sk_test_{a:8}"]),
    rule!("stripe.webhook_secret", "Stripe webhook signing secret", High, Block,
        anchored(&["whsec_"], r"whsec_[0-9A-Za-z+/=]{32,88}", 94), ["whsec_{a:32}"], ["whsec_{a:8}"]),
    rule!("shopify.access_token", "Shopify access token", High, Block,
        anchored(&["shpat_", "shpca_", "shppa_"], r"shp(?:at|ca|pa)_[a-fA-F0-9]{32}", 38), ["shpat_{h:32}", "shppa_{h:32}"], ["shpat_{h:8}"]),
    rule!("shopify.shared_secret", "Shopify shared secret", High, Block,
        anchored(&["shpss_"], r"shpss_[a-fA-F0-9]{32}", 38), ["shpss_{h:32}"], ["shpss_{h:8}"]),
    rule!("square.access_token", "Square access token", High, Block,
        anchored(&["sq0atp-", "sq0csp-", "EAAA"], r"(?:sq0atp-[0-9A-Za-z_\-]{22}|sq0csp-[0-9A-Za-z_\-]{43}|EAAA[0-9A-Za-z_\-]{60})", 64),
        ["sq0atp-{s:22}", "EAAA{s:60}"], ["sq0atp-{s:5}", "EAAA"]),
    // --- AI and developer platforms ---------------------------------------------------------
    rule!("anthropic.api_key", "Anthropic API key", Critical, Block,
        anchored(&["sk-ant-"], r"sk-ant-(?:api|admin|oat|sid)[0-9]{2}-[A-Za-z0-9_\-]{80,120}", 140),
        ["sk-ant-api03-{s:93}AA", "sk-ant-admin01-{s:93}AA"], ["sk-ant-api03-{s:10}"]),
    rule!("openai.api_key", "OpenAI API key", Critical, Block,
        Detector::Anchored { anchors: &["T3BlbkFJ"], pattern: r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,160}T3BlbkFJ[A-Za-z0-9_\-]{20,160}", lookbehind: 180, max_len: 360,
            bound_left: true, bound_right: true, validator: Validator::None },
        ["sk-{a:20}T3BlbkFJ{a:20}", "sk-proj-{s:74}T3BlbkFJ{s:73}"], ["T3BlbkFJ", "sk-{a:5}T3BlbkFJ{a:5}"]),
    rule!("openai.project_key", "OpenAI project or service-account key", Critical, Block,
        anchored(&["sk-proj-", "sk-svcacct-", "sk-admin-"], r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,200}", 212),
        ["sk-proj-{s:156}", "sk-svcacct-{s:64}"], ["sk-proj-{s:8}"]),
    rule!("huggingface.token", "Hugging Face access token", High, Block,
        anchored(&["hf_"], r"hf_[A-Za-z]{34}", 37), ["hf_{L:34}"], ["hf_{L:10}", "hf_{L:34}{L:2}"]),
    rule!("huggingface.org_token", "Hugging Face organisation token", High, Block,
        anchored(&["api_org_"], r"api_org_[A-Za-z]{34}", 42), ["api_org_{L:34}"], ["api_org_{L:5}"]),
    rule!("groq.api_key", "Groq API key", High, Block,
        anchored(&["gsk_"], r"gsk_[A-Za-z0-9]{52}", 56), ["gsk_{a:52}"], ["gsk_{a:20}"]),
    rule!("xai.api_key", "xAI API key", High, Block,
        anchored(&["xai-"], r"xai-[A-Za-z0-9]{80}", 84), ["xai-{a:80}"], ["xai-{a:12}"]),
    rule!("replicate.api_token", "Replicate API token", High, Block,
        anchored(&["r8_"], r"r8_[A-Za-z0-9]{37}", 40), ["r8_{a:37}"], ["r8_{a:7}"]),
    rule!("npm.token", "npm access token", Critical, Block,
        anchored(&["npm_"], r"npm_[A-Za-z0-9]{36}", 40), ["npm_{a:36}", "//registry.npmjs.org/:_authToken=npm_{a:36}"], ["npm_{a:10}", "npm_install_dependencies_please"]),
    rule!("pypi.token", "PyPI upload token", Critical, Block,
        anchored(&["pypi-AgEIcHlwaS5vcmc"], r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,300}", 320), ["pypi-AgEIcHlwaS5vcmc{s:120}"], ["pypi-AgEIcHlwaS5vcmc"]),
    rule!("dockerhub.pat", "Docker Hub personal access token", High, Block,
        anchored(&["dckr_pat_"], r"dckr_pat_[A-Za-z0-9_\-]{27}", 36), ["dckr_pat_{s:27}"], ["dckr_pat_{s:6}"]),
    rule!("postman.api_key", "Postman API key", High, Block,
        anchored(&["PMAK-"], r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}", 64), ["PMAK-{h:24}-{h:34}"], ["PMAK-{h:4}"]),
    rule!("newrelic.api_key", "New Relic user API key", High, Block,
        anchored(&["NRAK-"], r"NRAK-[A-Z0-9]{27}", 32), ["NRAK-{u:27}"], ["NRAK-{u:5}"]),
    rule!("grafana.token", "Grafana Cloud or service-account token", High, Block,
        anchored(&["glc_", "glsa_"], r"(?:glc_[A-Za-z0-9+/]{32,400}={0,2}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})", 406),
        ["glc_{b:60}", "glsa_{a:32}_{h:8}"], ["glc_{a:8}"]),
    rule!("sentry.token", "Sentry auth token", High, Block,
        anchored(&["sntrys_", "sntryu_"], r"(?:sntrys_eyJ[A-Za-z0-9+/=_\-]{60,300}|sntryu_[a-f0-9]{64})", 310),
        ["sntrys_eyJ{b:80}", "sntryu_{h:64}"], ["sntrys_abc"]),
    rule!("doppler.token", "Doppler token", High, Block,
        anchored(&["dp.pt.", "dp.st."], r"dp\.(?:pt|st)\.[A-Za-z0-9]{40,44}", 50), ["dp.pt.{a:43}"], ["dp.pt.{a:5}"]),
    rule!("datadog.api_key", "Datadog API key", High, Block,
        keyed(&["DD_API_KEY", "dd_api_key", "DD-API-KEY", "dd-api-key", "datadog_api_key", "DATADOG_API_KEY"],
            r#"(?i)(?:dd|datadog)[_-]api[_-]key["']?\s*[:=]\s*["']?([a-f0-9]{32})(?:[^a-f0-9]|$)"#, 8, 64, 3.0),
        ["DD_API_KEY={h:32}", "dd-api-key: {h:32}\r\n"], ["DD_API_KEY={h:16}", "dd_api_key = 00000000000000000000000000000000"]),
    rule!("datadog.app_key", "Datadog application key", High, Block,
        keyed(&["DD_APP_KEY", "dd_app_key", "DD-APPLICATION-KEY", "dd-application-key", "DD_APPLICATION_KEY"],
            r#"(?i)(?:dd|datadog)[_-]app(?:lication)?[_-]key["']?\s*[:=]\s*["']?([a-f0-9]{40})(?:[^a-f0-9]|$)"#, 8, 70, 3.0),
        ["DD_APP_KEY={h:40}", "dd-application-key: {h:40}\n"], ["DD_APP_KEY={h:20}"]),
    rule!("age.secret_key", "age encryption secret key", Critical, Block,
        anchored(&["AGE-SECRET-KEY-1"], r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}", 74), ["AGE-SECRET-KEY-1{B:58}"], ["AGE-SECRET-KEY-1abc"]),
    // --- keys, tokens, URLs -----------------------------------------------------------------
    rule!("private_key.pem", "PEM private key", Critical, Block,
        Detector::Anchored { anchors: &["-----BEGIN "], pattern: r"-----BEGIN (?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY-----", lookbehind: 0, max_len: 40,
            bound_left: false, bound_right: false, validator: Validator::None },
        ["-----BEGIN RSA PRIVATE KEY-----\nMIIE{b:60}\n", "-----BEGIN PRIVATE KEY-----\n"], ["-----BEGIN CERTIFICATE-----", "-----BEGIN PUBLIC KEY-----"]),
    rule!("private_key.openssh", "OpenSSH private key", Critical, Block,
        Detector::Anchored { anchors: &["-----BEGIN "], pattern: r"-----BEGIN OPENSSH PRIVATE KEY-----", lookbehind: 0, max_len: 40,
            bound_left: false, bound_right: false, validator: Validator::None },
        ["-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE{b:40}\n"], ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{b:40} user@host"]),
    rule!("private_key.pgp", "PGP private key block", Critical, Block,
        Detector::Anchored { anchors: &["-----BEGIN "], pattern: r"-----BEGIN PGP PRIVATE KEY BLOCK-----", lookbehind: 0, max_len: 40,
            bound_left: false, bound_right: false, validator: Validator::None },
        ["-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQ{b:60}\n"], ["-----BEGIN PGP PUBLIC KEY BLOCK-----"]),
    rule!("jwt", "JSON Web Token", Medium, Audit,
        anchored(&["eyJ"], r"eyJ[A-Za-z0-9_\-]{10,2000}\.eyJ[A-Za-z0-9_\-]{10,4000}\.[A-Za-z0-9_\-]{10,1000}", 7000),
        ["eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{s:40}.{s:43}"], ["eyJhbGciOiJIUzI1NiJ9", "eyJ{s:20}.abc.def"]),
    rule!("database_url", "Database URL with an embedded password", Critical, Block,
        Detector::Anchored { anchors: &["postgres", "mysql", "mariadb", "mongodb", "redis", "rediss", "amqp", "mssql", "sqlserver", "jdbc:"],
            pattern: r#"(?:jdbc:)?(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver)://[^\s:/@"'<>]{0,64}:([^\s@/"'<>]{3,128})@[A-Za-z0-9.\-\[\]:]+"#,
            lookbehind: 0, max_len: 300, bound_left: true, bound_right: false, validator: Validator::None },
        ["postgres://app:{a:16}@db.internal:5432/app", "mongodb+srv://u:{a:12}@cluster0.x.mongodb.net", "redis://:{a:20}@cache:6379"],
        ["postgres://localhost/app", "mysql://user@host/db", "postgresql is a database"]),
    rule!("url.basic_auth", "Credentials in a URL's userinfo", High, Redact,
        Detector::Anchored { anchors: &["://"], pattern: r#"[A-Za-z][A-Za-z0-9+.\-]{1,15}://[^\s:/@"'<>]{1,64}:([^\s@/"'<>]{3,128})@[A-Za-z0-9.\-]+"#,
            lookbehind: 17, max_len: 230, bound_left: true, bound_right: false, validator: Validator::None },
        ["https://deploy:{a:16}@git.example.com/repo.git"], ["https://example.com/a:b@c", "mailto:user@example.com", "https://user@example.com/"]),
    rule!("generic.password_assignment", "Password assigned in code or config", Medium, Redact,
        keyed(&["password", "Password", "PASSWORD", "passwd", "PASSWD", "pwd"],
            r#"(?i)(?:password|passwd|pwd)["']?\s*[:=]\s*["']([^"'\s]{8,64})["']"#, 0, 100, 3.0),
        ["password = \"{a:16}\"", "{\"db_password\": \"{a:12}\"}"],
        ["password = \"changeme\"", "password = \"\"", "password: \"aaaaaaaaaaaa\"", "enter your password here"]),
    RuleDef {
        id: "generic.secret_assignment",
        title: "High-entropy value assigned to a secret-like name",
        severity: Medium,
        action: Redact,
        optional: false,
        scope: Scope::Egress,
        detector: Detector::Builtin(Builtin::GenericSecret),
        examples: &["client_secret = \"{a:32}\"", "\"api_key\": \"{s:40}\"", "SECRET_TOKEN={a:24}"],
        near_misses: &["client_secret = \"550e8400-e29b-41d4-a716-446655440000\"", "api_key = \"{h:8}\"",
            "secret = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"", "the token was {a:32}"],
    },
    // --- financial --------------------------------------------------------------------------
    RuleDef {
        id: "financial.credit_card",
        title: "Payment card number (Luhn-valid, known issuer prefix)",
        severity: High,
        action: Redact,
        optional: false,
        scope: Scope::Egress,
        detector: Detector::Builtin(Builtin::CreditCard),
        examples: &["4111111111111111", "card: 4111 1111 1111 1111.", "5555-5555-5555-4444", "378282246310005"],
        near_misses: &["4111111111111112", "1234 5678 9012 3456", "order 20240101123456789", "+1 415 555 0100 ext 1234"],
    },
    RuleDef {
        id: "financial.iban",
        title: "IBAN (mod-97 valid)",
        severity: High,
        action: Redact,
        optional: false,
        scope: Scope::Egress,
        detector: Detector::Builtin(Builtin::Iban),
        examples: &["DE89370400440532013000", "IBAN: GB82 WEST 1234 5698 7654 32", "FR1420041010050500013M02606"],
        near_misses: &["DE89370400440532013001", "GB82 WEST 1234", "XX89370400440532013000"],
    },
    RuleDef {
        id: "crypto.bitcoin_wif",
        title: "Bitcoin private key (WIF, Base58Check valid)",
        severity: Critical,
        action: Block,
        optional: false,
        scope: Scope::Egress,
        detector: Detector::Builtin(Builtin::BitcoinWif),
        examples: &["5HpHagT65TZzG1PH3CSu63k8DbpvD8s5ip4nEB3kEsreAnchuDf", "KwDiBf89QgGbjEhKnhXJuH7LrciVrZi3qYjgd9M7rFU73sVHnoWn"],
        near_misses: &["5HpHagT65TZzG1PH3CSu63k8DbpvD8s5ip4nEB3kEsreAnchuDg", "KwDiBf89QgGbjEhKnhXJuH7LrciVrZi3qYjgd9M7rFU73sVHnoWm"],
    },
    RuleDef {
        id: "crypto.bip39_seed",
        title: "BIP-39 seed phrase (checksum valid)",
        severity: Critical,
        action: Block,
        optional: false,
        scope: Scope::Egress,
        detector: Detector::Builtin(Builtin::Bip39Seed),
        examples: &["abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
            "seed: legal winner thank year wave sausage worth useful legal winner thank yellow"],
        near_misses: &["abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon",
            "the quick brown fox jumps over the lazy dog and then some more words follow here"],
    },
    RuleDef {
        id: "crypto.eth_address",
        title: "Ethereum address",
        severity: Low,
        action: Audit,
        optional: true,
        scope: Scope::Egress,
        detector: anchored(&["0x"], r"0x[0-9a-fA-F]{40}", 42),
        examples: &["0x{h:40}"],
        near_misses: &["0x{h:20}"],
    },
    RuleDef {
        id: "crypto.btc_address",
        title: "Bitcoin bech32 address",
        severity: Low,
        action: Audit,
        optional: true,
        scope: Scope::Egress,
        detector: anchored(&["bc1q", "bc1p"], r"bc1[qp][ac-hj-np-z02-9]{38,58}", 62),
        examples: &["bc1q{B32:38}"],
        near_misses: &["bc1qshort"],
    },
    // --- responses: prompt injection --------------------------------------------------------
    RuleDef {
        id: "injection.instruction_override",
        title: "Instruction-override phrase in a response",
        severity: High,
        action: Block,
        optional: false,
        scope: Scope::Ingress,
        detector: Detector::Builtin(Builtin::InjectionOverride),
        examples: &[],
        near_misses: &[],
    },
    RuleDef {
        id: "injection.role_token",
        title: "Chat-template role token in a response",
        severity: High,
        action: Block,
        optional: false,
        scope: Scope::Ingress,
        detector: Detector::Builtin(Builtin::InjectionRoleToken),
        examples: &[],
        near_misses: &[],
    },
    RuleDef {
        id: "injection.hidden_instruction",
        title: "Injection phrase hidden in HTML (comment, display:none, script or style)",
        severity: Critical,
        action: Block,
        optional: false,
        scope: Scope::Ingress,
        detector: Detector::Builtin(Builtin::InjectionHidden),
        examples: &[],
        near_misses: &[],
    },
    // --- URL layers -------------------------------------------------------------------------
    RuleDef { id: "url.scheme", title: "Scheme other than http, https, ws or wss", severity: High, action: Block, optional: false,
        scope: Scope::Egress, detector: Detector::Builtin(Builtin::UrlScheme), examples: &[], near_misses: &[] },
    RuleDef { id: "url.crlf_injection", title: "CR or LF (raw or encoded) inside a URL", severity: High, action: Block, optional: false,
        scope: Scope::Egress, detector: Detector::Builtin(Builtin::UrlCrlf), examples: &[], near_misses: &[] },
    RuleDef { id: "url.path_traversal", title: "Dot-dot path traversal (raw or encoded)", severity: Medium, action: Audit, optional: false,
        scope: Scope::Egress, detector: Detector::Builtin(Builtin::UrlTraversal), examples: &[], near_misses: &[] },
    RuleDef { id: "url.ssrf", title: "Host is a loopback, private, link-local or metadata address", severity: High, action: Block, optional: false,
        scope: Scope::Egress, detector: Detector::Builtin(Builtin::UrlSsrf), examples: &[], near_misses: &[] },
    RuleDef { id: "url.length", title: "URL longer than the configured limit", severity: Medium, action: Audit, optional: false,
        scope: Scope::Egress, detector: Detector::Builtin(Builtin::UrlLength), examples: &[], near_misses: &[] },
    RuleDef { id: "url.high_entropy", title: "Long random-looking path or query value (possible exfiltration)", severity: Medium, action: Audit, optional: false,
        scope: Scope::Egress, detector: Detector::Builtin(Builtin::UrlEntropy), examples: &[], near_misses: &[] },
    RuleDef { id: "dns.label_exfil", title: "Random-looking or oversized DNS labels (exfiltration through subdomains)", severity: Medium, action: Audit, optional: false,
        scope: Scope::Egress, detector: Detector::Builtin(Builtin::DnsLabelExfil), examples: &[], near_misses: &[] },
    // --- engine limits ----------------------------------------------------------------------
    RuleDef {
        id: "limits.decompression_bomb",
        title: "Compressed body expands past the configured bounds",
        severity: High,
        action: Block,
        optional: false,
        scope: Scope::Any,
        detector: Detector::Builtin(Builtin::DecompressionBomb),
        examples: &[],
        near_misses: &[],
    },
    RuleDef {
        id: "limits.undecodable_body",
        title: "Body declares a content encoding the engine cannot decode",
        severity: Medium,
        action: Block,
        optional: false,
        scope: Scope::Any,
        detector: Detector::Builtin(Builtin::DecodeLimit),
        examples: &[],
        near_misses: &[],
    },
];

/// Index of a rule in [`RULES`].
pub(crate) type RuleIdx = u16;

pub(crate) fn index_of(id: &str) -> Option<RuleIdx> {
    RULES.iter().position(|r| r.id == id).map(|i| i as RuleIdx)
}

pub(crate) fn builtin_idx(b: Builtin) -> RuleIdx {
    RULES
        .iter()
        .position(|r| matches!(r.detector, Detector::Builtin(x) if x == b))
        .expect("every builtin has a catalog entry") as RuleIdx
}
