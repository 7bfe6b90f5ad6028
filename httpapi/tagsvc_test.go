package httpapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"hsmkms/kms"
)

func (a refusingAdmin) ModifyTags(context.Context, string, string, []kms.Tag, []string) error {
	return a.err
}
func (a refusingAdmin) KeyTags(context.Context, string) ([]kms.Tag, error) { return nil, a.err }
func (a refusingAdmin) TaggedKeys(context.Context, []kms.TagFilter) []kms.TaggedKey {
	return nil
}
func (a refusingAdmin) ServiceStatus(context.Context) (kms.ServiceStatus, error) {
	return kms.ServiceStatus{}, a.err
}
func (a refusingAdmin) Regions(context.Context) ([]string, error) { return nil, a.err }
func (a refusingAdmin) Region() string                            { return "ap-test" }

// sendVersion sends c with X-TC-Version version.
func (c *tc3Call) sendVersion(t *testing.T, s *Server, version string) string {
	t.Helper()
	auth := c.sign()
	req := httptest.NewRequest(http.MethodPost, "http://"+c.host+"/", strings.NewReader(c.body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-TC-Action", c.action)
	req.Header.Set("X-TC-Version", version)
	req.Header.Set("X-TC-Timestamp", strconv.FormatInt(c.ts, 10))
	req.Header.Set("Authorization", auth)
	return api3Code(t, s, req)
}

const tagKeyRes = "qcs::kms:ap-test:uin/:key/creatorUin/0/9999aed0-4956-11e9-bc70-5254005e86b4"

// A Tag request is one whose TC3 credential scope names the service tag:
// it needs the Tag API's version, is refused for KMS actions, and reaches
// the domain (whose refusal comes back) when complete. A KMS-scoped
// request with the Tag version is not served.
func TestTagServiceDispatch(t *testing.T) {
	admin := refusingAdmin{err: kms.ErrUnauthorized}
	s := New(&fakeKMS{CredentialAdmin: admin, KeyAdmin: admin, TagAdmin: admin, err: kms.ErrUnauthorized}, Config{Logger: discardLogger()})
	modify := `{"Resource":"` + tagKeyRes + `","ReplaceTags":[{"TagKey":"team","TagValue":"pay"}]}`
	tests := []struct {
		name, service, action, version, body, want string
	}{
		{"complete", "tag", "ModifyResourceTags", TagAPIVersion, modify, "UnauthorizedOperation"},
		{"describe", "tag", "DescribeResourceTagsByResourceIds", TagAPIVersion,
			`{"ServiceType":"kms","ResourcePrefix":"key","ResourceRegion":"ap-test","ResourceIds":["creatorUin/0/9999aed0-4956-11e9-bc70-5254005e86b4"]}`, "UnauthorizedOperation"},
		{"tag resources lists the failure", "tag", "TagResources", TagAPIVersion, `{"ResourceList":["` + tagKeyRes + `"],"Tags":[{"TagKey":"a","TagValue":"b"}]}`, ""},
		{"KMS version under the tag scope", "tag", "ModifyResourceTags", API3Version, modify, "NoSuchVersion"},
		{"Tag version under the kms scope", "kms", "ModifyResourceTags", TagAPIVersion, modify, "NoSuchVersion"},
		{"KMS action under the tag scope", "tag", "Encrypt", TagAPIVersion, encBody, "InvalidAction"},
		{"unknown parameter", "tag", "ModifyResourceTags", TagAPIVersion, `{"Nope":1}`, "UnknownParameter"},
		{"another service's resource", "tag", "ModifyResourceTags", TagAPIVersion,
			`{"Resource":"qcs::cvm:ap-test:uin/1:instance/ins-1","ReplaceTags":[{"TagKey":"a","TagValue":"b"}]}`, "InvalidParameterValue.ResourceDescriptionError"},
		{"another region", "tag", "ModifyResourceTags", TagAPIVersion,
			`{"Resource":"qcs::kms:ap-other:uin/:key/9999aed0-4956-11e9-bc70-5254005e86b4","ReplaceTags":[{"TagKey":"a","TagValue":"b"}]}`, "InvalidParameterValue.ResourceDescriptionError"},
		{"neither replace nor delete", "tag", "ModifyResourceTags", TagAPIVersion, `{"Resource":"` + tagKeyRes + `"}`, "MissingParameter"},
		{"other service type", "tag", "DescribeResourceTagsByResourceIds", TagAPIVersion,
			`{"ServiceType":"cvm","ResourcePrefix":"instance","ResourceIds":["ins-1"]}`, "InvalidParameterValue"},
		{"GetServiceStatus", "kms", "GetServiceStatus", API3Version, `{}`, "UnauthorizedOperation"},
		{"GetRegions", "kms", "GetRegions", API3Version, `{}`, "UnauthorizedOperation"},
	}
	for i, tt := range tests {
		c := &tc3Call{service: tt.service, action: tt.action, body: tt.body, ts: time.Now().Unix() - int64(i)} // one signature per case
		if got := c.sendVersion(t, s, tt.version); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}

// A Tag signature that does not sign its action is bound to the first
// action it was accepted with, like a KMS one.
func TestTagSignatureBoundToAction(t *testing.T) {
	admin := refusingAdmin{err: kms.ErrUnauthorized}
	s := New(&fakeKMS{CredentialAdmin: admin, KeyAdmin: admin, TagAdmin: admin}, Config{Logger: discardLogger()})
	body := `{"Resource":"` + tagKeyRes + `","ReplaceTags":[{"TagKey":"a","TagValue":"b"}]}`
	c := &tc3Call{service: "tag", action: "ModifyResourceTags", body: body}
	if got := c.sendVersion(t, s, TagAPIVersion); got != "UnauthorizedOperation" {
		t.Fatalf("first: %q", got)
	}
	c.action = "TagResources"
	if got := c.sendVersion(t, s, TagAPIVersion); !strings.HasPrefix(got, "AuthFailure") {
		t.Fatalf("the same signature with another action: %q, want an AuthFailure", got)
	}
}

func TestParseResource(t *testing.T) {
	admin := refusingAdmin{}
	s := New(&fakeKMS{TagAdmin: admin}, Config{Logger: discardLogger()})
	const id = "9999aed0-4956-11e9-bc70-5254005e86b4"
	for _, tt := range []struct {
		name, want string
	}{
		{"qcs::kms:ap-test:uin/:key/creatorUin/0/" + id, id},        // what the Terraform provider builds
		{"qcs::kms:ap-test:uin/100:key/" + id, id},                  // tccli, a key id
		{"qcs::kms::uin/0:key/" + id, id},                           // no region
		{"qcs::kms:ap-other:uin/0:key/" + id, ""},                   // another region
		{"qcs::cvm:ap-test:uin/0:instance/ins-1", ""},               // another service
		{"qcs::kms:ap-test:uin/0:alias/x", ""},                      // not a key
		{"qcs::kms:ap-test:uin/0:key/creatorUin/0", ""},             // no key id
		{"qcs::kms:ap-test:123:key/" + id, ""},                      // no uin/
		{"qcs:kms:ap-test:uin/0:key/" + id, ""},                     // five segments
		{"kms:ap-test:uin/0:key/" + id + ":x:y", ""},                // not qcs
		{"qcs::kms:ap-test:uin/0:key/" + id + ":extra", ""},         // seven segments
		{"qcs::kms:ap-test:uin/0:key/creatorUin/0/" + "xyz", "xyz"}, // parsed; the domain refuses the id
	} {
		r, err := s.parseResource(tt.name)
		if got := r.keyID; got != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("%s: %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	if got := scopeService("TC3-HMAC-SHA256 Credential=AKID/2026-01-01/tag/tc3_request, SignedHeaders=host, Signature=x"); got != "tag" {
		t.Errorf("scopeService = %q", got)
	}
}

// Every Tag action of the table: an unknown parameter is refused before
// the domain is called; a complete request reaches the domain (whose
// refusal comes back, or is listed per resource).
func TestEveryTagAction(t *testing.T) {
	admin := refusingAdmin{err: kms.ErrUnauthorized}
	s := New(&fakeKMS{CredentialAdmin: admin, KeyAdmin: admin, TagAdmin: admin}, Config{Logger: discardLogger()})
	complete := map[string]string{
		"TagResources":                      `{"ResourceList":["` + tagKeyRes + `"],"Tags":[{"TagKey":"a","TagValue":"b"}]}`,
		"UnTagResources":                    `{"ResourceList":["` + tagKeyRes + `"],"TagKeys":["a"]}`,
		"ModifyResourceTags":                `{"Resource":"` + tagKeyRes + `","DeleteTags":[{"TagKey":"a"}]}`,
		"DescribeResourceTagsByResourceIds": `{"ServiceType":"kms","ResourcePrefix":"key","ResourceIds":["9999aed0-4956-11e9-bc70-5254005e86b4"]}`,
		"GetResources":                      `{"ResourceList":["` + tagKeyRes + `"]}`,
	}
	// TagResources and UnTagResources list a refused resource in
	// FailedResources; GetResources leaves out what the caller may not see.
	wantCode := map[string]string{"TagResources": "", "UnTagResources": "", "GetResources": ""}
	i := 0
	for name := range s.actions.tag {
		i++
		body, ok := complete[name]
		if !ok {
			t.Fatalf("no complete request for %s", name)
		}
		c := &tc3Call{service: "tag", action: name, signed: name, body: `{"Nope":1}`}
		if got := c.sendVersion(t, s, TagAPIVersion); got != "UnknownParameter" {
			t.Errorf("%s with an unknown parameter: %q", name, got)
		}
		want, listed := wantCode[name]
		if !listed {
			want = "UnauthorizedOperation"
		}
		c = &tc3Call{service: "tag", action: name, signed: name, body: body}
		if got := c.sendVersion(t, s, TagAPIVersion); got != want {
			t.Errorf("%s complete: %q, want %q", name, got, want)
		}
	}
	if i != 5 {
		t.Fatalf("%d Tag actions", i)
	}
}

func TestScopeServiceAllocs(t *testing.T) {
	authz := "TC3-HMAC-SHA256 Credential=AKID/2026-01-01/kms/tc3_request, SignedHeaders=content-type;host, Signature=x"
	for in, want := range map[string]string{authz: "kms", "TC3-HMAC-SHA256 Credential=AKID/2026-01-01": "", "x": ""} {
		if got := scopeService(in); got != want {
			t.Errorf("scopeService(%q) = %q, want %q", in, got, want)
		}
	}
	if raceEnabled {
		t.Log("allocations are counted by make test's run without -race")
		return
	}
	if n := testing.AllocsPerRun(100, func() { _ = scopeService(authz) }); n != 0 {
		t.Fatalf("scopeService: %v allocations, want none", n)
	}
}

// A signature-v1 request (tccli's HmacSHA256 option) is a Tag request by
// its Version.
func TestTagServiceSignatureV1(t *testing.T) {
	admin := refusingAdmin{err: kms.ErrUnauthorized}
	s := New(&fakeKMS{CredentialAdmin: admin, KeyAdmin: admin, TagAdmin: admin}, Config{Logger: discardLogger()})
	for _, tt := range []struct{ version, action, want string }{
		{TagAPIVersion, "DescribeResourceTagsByResourceIds", "UnauthorizedOperation"},
		{TagAPIVersion, "DescribeKey", "InvalidAction"},
		{API3Version, "DescribeResourceTagsByResourceIds", "InvalidAction"},
	} {
		q := url.Values{"Action": {tt.action}, "Version": {tt.version}, "ServiceType": {"kms"}, "ResourcePrefix": {"key"},
			"ResourceIds.0": {"creatorUin/0/9999aed0-4956-11e9-bc70-5254005e86b4"}}
		q = signV1(http.MethodPost, "example.com", "/", "HmacSHA256", q)
		req := httptest.NewRequest(http.MethodPost, "http://example.com/", strings.NewReader(q.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if got := api3Code(t, s, req); got != tt.want {
			t.Errorf("%s %s: %q, want %q", tt.version, tt.action, got, tt.want)
		}
	}
}
