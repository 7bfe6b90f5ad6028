package main_test

// Resource tags end to end: the official SDK's kms and tag packages
// against the real kmsd (SQLite and a PostgreSQL cluster), the policy's
// tag: actions, restarts, and tag rows edited in the database.

import (
	"database/sql"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"
	tctag "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/tag/v20180813"

	"hsmkms/softhsm"
)

// tagClient is the official SDK's Tag client pointed at kmsd.
func tagClient(t *testing.T, s *server, id, key string) *tctag.Client {
	t.Helper()
	cpf := profile.NewClientProfile()
	cpf.HttpProfile.Endpoint = strings.TrimPrefix(s.url, "http://")
	cpf.HttpProfile.Scheme = "HTTP"
	cpf.HttpProfile.ReqTimeout = 10
	c, err := tctag.NewClient(common.NewCredential(id, key), "ap-guangzhou", cpf)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sp(s string) *string { return &s }

// keyTags reads a key's tags as the Terraform provider does.
func keyTags(t *testing.T, c *tctag.Client, keyID string) (map[string]string, string) {
	t.Helper()
	req := tctag.NewDescribeResourceTagsByResourceIdsRequest()
	req.ServiceType, req.ResourcePrefix, req.ResourceRegion = sp("kms"), sp("key"), sp("ap-guangzhou")
	req.ResourceIds = []*string{sp("creatorUin/0/" + keyID)}
	limit, offset := uint64(50), uint64(0)
	req.Limit, req.Offset = &limit, &offset
	resp, err := c.DescribeResourceTagsByResourceIds(req)
	if err != nil {
		return nil, sdkCode(err)
	}
	out := map[string]string{}
	for _, tg := range resp.Response.Tags {
		if *tg.ResourceId != "creatorUin/0/"+keyID {
			t.Fatalf("ResourceId %q, want the one asked", *tg.ResourceId)
		}
		out[*tg.TagKey] = *tg.TagValue
	}
	return out, ""
}

func resName(keyID string) string { return "qcs::kms:ap-guangzhou:uin/:key/creatorUin/0/" + keyID }

func modifyTags(c *tctag.Client, keyID string, set map[string]string, del ...string) string {
	req := tctag.NewModifyResourceTagsRequest()
	req.Resource = sp(resName(keyID))
	for k, v := range set {
		req.ReplaceTags = append(req.ReplaceTags, &tctag.Tag{TagKey: sp(k), TagValue: sp(v)})
	}
	for _, k := range del {
		req.DeleteTags = append(req.DeleteTags, &tctag.TagKeyObject{TagKey: sp(k)})
	}
	_, err := c.ModifyResourceTags(req)
	return sdkCode(err)
}

func createTagged(t *testing.T, c *tckms.Client, alias string, tags map[string]string) (string, string) {
	t.Helper()
	req := tckms.NewCreateKeyRequest()
	req.Alias = sp(alias)
	for k, v := range tags {
		req.Tags = append(req.Tags, &tckms.Tag{TagKey: sp(k), TagValue: sp(v)})
	}
	resp, err := c.CreateKey(req)
	if err != nil {
		return "", sdkCode(err)
	}
	return *resp.Response.KeyId, ""
}

func listByTag(t *testing.T, c *tckms.Client, key string, values ...string) []string {
	t.Helper()
	req := tckms.NewListKeyDetailRequest()
	f := &tckms.TagFilter{TagKey: sp(key)}
	for _, v := range values {
		f.TagValue = append(f.TagValue, sp(v))
	}
	req.TagFilters = []*tckms.TagFilter{f}
	resp, err := c.ListKeyDetail(req)
	if err != nil {
		t.Fatalf("ListKeyDetail: %s", sdkCode(err))
	}
	var ids []string
	for _, m := range resp.Response.KeyMetadatas {
		ids = append(ids, *m.KeyId)
	}
	slices.Sort(ids)
	return ids
}

func TestTagsEndToEnd(t *testing.T) {
	s, tok, data := newServer(t)
	env := kmsdEnv(tok, data)
	k := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	tg := tagClient(t, s, adminID, adminKey)

	a, code := createTagged(t, k, "tagged-a", map[string]string{"team": "pay", "env": "prod"})
	if code != "" {
		t.Fatalf("CreateKey with Tags: %s", code)
	}
	b, _ := createTagged(t, k, "tagged-b", map[string]string{"team": "ops"})
	plain, _ := createTagged(t, k, "untagged", nil)
	if got, code := keyTags(t, tg, a); code != "" || len(got) != 2 || got["team"] != "pay" || got["env"] != "prod" {
		t.Fatalf("tags of a: %v %s", got, code)
	}
	// Limits, as Tencent documents them.
	for name, tags := range map[string]map[string]string{
		"InvalidParameterValue.ReservedTagKey":           {"qcloud:x": "v"},
		"InvalidParameterValue.TagKeyCharacterIllegal":   {"a<b": "v"},
		"InvalidParameterValue.TagValueLengthExceeded":   {"k": strings.Repeat("v", 256)},
		"InvalidParameterValue.TagKeyLengthExceeded":     {strings.Repeat("k", 128): "v"},
		"InvalidParameterValue.TagValueCharacterIllegal": {"k": "a;b"},
	} {
		if _, code := createTagged(t, k, "bad", tags); code != name {
			t.Errorf("CreateKey with %v: %q, want %s", tags, code, name)
		}
		if code := modifyTags(tg, a, tags); code != name {
			t.Errorf("ModifyResourceTags with %v: %q, want %s", tags, code, name)
		}
	}
	many := map[string]string{}
	for i := range 51 {
		many["k"+strings.Repeat("x", i)] = "v"
	}
	if _, code := createTagged(t, k, "bad", many); code != "LimitExceeded.TagNumPerResource" {
		t.Errorf("51 tags: %q", code)
	}
	if _, code := createTagged(t, k, "unicode", map[string]string{"部门": "电商 A+B=c/d@e:f_g.h-i"}); code != "" {
		t.Errorf("CJK and the allowed punctuation: %q", code)
	}

	// Change, as the provider's update does: replace one, delete one.
	if code := modifyTags(tg, a, map[string]string{"team": "payments", "owner": "zhang"}, "env"); code != "" {
		t.Fatalf("ModifyResourceTags: %s", code)
	}
	if got, _ := keyTags(t, tg, a); len(got) != 2 || got["team"] != "payments" || got["owner"] != "zhang" {
		t.Fatalf("after modify: %v", got)
	}
	// tccli's TagResources, UnTagResources, GetResources.
	tr := tctag.NewTagResourcesRequest()
	tr.ResourceList = []*string{sp(resName(a)), sp("qcs::kms:ap-guangzhou:uin/0:key/" + b)}
	tr.Tags = []*tctag.Tag{{TagKey: sp("cost"), TagValue: sp("42")}}
	if resp, err := tg.TagResources(tr); err != nil || len(resp.Response.FailedResources) != 0 {
		t.Fatalf("TagResources: %s %v", sdkCode(err), resp)
	}
	gr := tctag.NewGetResourcesRequest()
	gr.TagFilters = []*tctag.TagFilter{{TagKey: sp("cost"), TagValue: []*string{sp("42")}}}
	resp, err := tg.GetResources(gr)
	if err != nil {
		t.Fatalf("GetResources: %s", sdkCode(err))
	}
	var names []string
	for _, m := range resp.Response.ResourceTagMappingList {
		names = append(names, *m.Resource)
	}
	slices.Sort(names)
	want := []string{"qcs::kms:ap-guangzhou:uin/0:key/creatorUin/0/" + a, "qcs::kms:ap-guangzhou:uin/0:key/creatorUin/0/" + b}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("GetResources by tag: %v, want %v", names, want)
	}
	ut := tctag.NewUnTagResourcesRequest()
	ut.ResourceList = []*string{sp(resName(b))}
	ut.TagKeys = []*string{sp("cost")}
	if _, err := tg.UnTagResources(ut); err != nil {
		t.Fatalf("UnTagResources: %s", sdkCode(err))
	}
	if got := listByTag(t, k, "cost"); !slices.Equal(got, []string{a}) {
		t.Fatalf("ListKeyDetail TagFilters cost: %v, want [%s]", got, a)
	}
	ab := []string{a, b}
	slices.Sort(ab)
	if got := listByTag(t, k, "team", "payments", "ops"); !slices.Equal(got, ab) {
		t.Fatalf("ListKeyDetail TagFilters team in (payments, ops): %v", got)
	}
	if got := listByTag(t, k, "team", "nobody"); len(got) != 0 {
		t.Fatalf("ListKeyDetail TagFilters team=nobody: %v", got)
	}

	// Policy: tag: actions on keys; kms:* includes them; kms:DescribeKey
	// does not.
	adm := s.sdkCred(t, adminID, adminKey)
	reader := adm.create("tag-reader", `{"effect":"allow","action":["tag:DescribeResourceTagsByResourceIds","kms:DescribeKey"],"resource":["`+a+`"]}`)
	rt := tagClient(t, s, reader.id, reader.key)
	if got, code := keyTags(t, rt, a); code != "" || got["team"] != "payments" {
		t.Fatalf("tag reader reads a: %v %s", got, code)
	}
	if _, code := keyTags(t, rt, b); code != "UnauthorizedOperation" {
		t.Fatalf("tag reader reads b: %q", code)
	}
	if code := modifyTags(rt, a, map[string]string{"x": "y"}); code != "UnauthorizedOperation" {
		t.Fatalf("tag reader modifies a: %q", code)
	}
	describer := adm.create("describer", `{"effect":"allow","action":["kms:DescribeKey","kms:Describe*","kms:CreateKey"],"resource":["*"]}`)
	dt := tagClient(t, s, describer.id, describer.key)
	if _, code := keyTags(t, dt, a); code != "UnauthorizedOperation" {
		t.Fatalf("kms:Describe* reads tags: %q", code)
	}
	if _, code := createTagged(t, describer.kms, "desc-tagged", map[string]string{"a": "b"}); code != "UnauthorizedOperation" {
		t.Fatalf("CreateKey with Tags without tag:TagResources: %q", code)
	}
	tagger := adm.create("tagger", `{"effect":"allow","action":["tag:*"],"resource":["`+b+`"]}`)
	if code := modifyTags(tagClient(t, s, tagger.id, tagger.key), b, map[string]string{"by": "tagger"}); code != "" {
		t.Fatalf("tag:* on b modifies b: %q", code)
	}
	if code := modifyTags(tagClient(t, s, tagger.id, tagger.key), a, map[string]string{"by": "tagger"}); code != "UnauthorizedOperation" {
		t.Fatalf("tag:* on b modifies a: %q", code)
	}
	// A credential manager cannot grant tag rights it does not hold.
	mgr := adm.create("mgr", `{"effect":"allow","action":["kms-admin:*","kms:Encrypt"],"resource":["*"]}`)
	if _, code, _ := mgr.call("CreateCredential", map[string]any{"Name": "x", "Policy": `{"version":"2.0","statement":[{"effect":"allow","action":["tag:TagResources"],"resource":["*"]}]}`}); code != "UnauthorizedOperation" {
		t.Fatalf("manager grants tag:TagResources: %q", code)
	}

	// Tags survive a restart.
	s.stop()
	s = startKMSD(t, env)
	tg = tagClient(t, s, adminID, adminKey)
	if got, _ := keyTags(t, tg, a); len(got) != 3 || got["cost"] != "42" || got["team"] != "payments" {
		t.Fatalf("tags of a after restart: %v", got)
	}
	s.stop()

	// Tag rows edited in the database: the key fails its integrity check.
	db, err := sql.Open("sqlite", filepath.Join(data, "kms.db"))
	if err != nil {
		t.Fatal(err)
	}
	execSQL(t, db, `UPDATE key_tags SET tag_value = 'eve' WHERE key_id = ? AND tag_key = 'team'`, a)
	execSQL(t, db, `DELETE FROM key_tags WHERE key_id = ? AND tag_key = 'team'`, b)
	execSQL(t, db, `INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES (?, 'team', 'eve')`, plain)
	db.Close()
	s = startKMSD(t, env)
	for name, id := range map[string]string{"changed": a, "removed": b, "added": plain} {
		if c := s.encryptCode(t, id, adminID, adminKey); c != "ResourceUnavailable.CmkDisabled" {
			t.Errorf("tag row %s: Encrypt %q, want ResourceUnavailable.CmkDisabled", name, c)
		}
		if !strings.Contains(s.stderr.String(), id) {
			t.Errorf("tag row %s: the log does not name %s", name, id)
		}
	}
	if n := s.metric(t, "kmsd_integrity_failing_rows"); n != 3 {
		t.Fatalf("kmsd_integrity_failing_rows %v, want 3", n)
	}
	tg = tagClient(t, s, adminID, adminKey)
	if code := modifyTags(tg, a, map[string]string{"x": "y"}); code == "" {
		t.Fatal("a key failing its check was re-tagged (which would reseal it)")
	}
	if got, code := keyTags(t, tg, a); code != "ResourceUnavailable.CmkDisabled" {
		t.Fatalf("tags of a tampered key: %v %q, want ResourceUnavailable.CmkDisabled", got, code)
	}
	k = sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	if got := listByTag(t, k, "team", "eve"); len(got) != 0 {
		t.Fatalf("ListKeyDetail matched the edited tags: %v", got)
	}
}

// On a PostgreSQL cluster, tags set on one node show on the other, and a
// tag row edited in the database is refused by both.
func TestTagsCluster(t *testing.T) {
	c := newCluster(t)
	a := c.start("KMSD_POSTGRES_RESYNC_INTERVAL=300ms")
	c.pause()
	b := c.start("KMSD_POSTGRES_RESYNC_INTERVAL=300ms")
	ka := sdkClient(t, a, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	id, code := createTagged(t, ka, "cluster-tagged", map[string]string{"team": "pay"})
	if code != "" {
		t.Fatal(code)
	}
	tb := tagClient(t, b, adminID, adminKey)
	within(t, 10*time.Second, "tags of a new key on the other node", func() bool {
		got, _ := keyTags(t, tb, id)
		return got["team"] == "pay"
	})
	if code := modifyTags(tagClient(t, a, adminID, adminKey), id, map[string]string{"team": "ops"}); code != "" {
		t.Fatal(code)
	}
	within(t, 10*time.Second, "a tag change on the other node", func() bool {
		got, _ := keyTags(t, tb, id)
		return got["team"] == "ops"
	})
	kb := sdkClient(t, b, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	if got := listByTag(t, kb, "team", "ops"); !slices.Equal(got, []string{id}) {
		t.Fatalf("ListKeyDetail on the other node: %v", got)
	}

	pgExec(t, c.pgConn(t), `UPDATE key_tags SET tag_value = 'eve' WHERE key_id = $1`, id)
	within(t, 10*time.Second, "an edited tag row refused on both nodes", func() bool {
		return a.encryptCode(t, id, adminID, adminKey) == "ResourceUnavailable.CmkDisabled" &&
			b.encryptCode(t, id, adminID, adminKey) == "ResourceUnavailable.CmkDisabled"
	})
	if _, code := keyTags(t, tb, id); code != "ResourceUnavailable.CmkDisabled" {
		t.Fatalf("tags of the edited key: %q", code)
	}
}

// GetServiceStatus and GetRegions, as SDK-based tools probe the service,
// and GenerateDataKey's hosted-data-key fields, on a kmsd with its own
// region.
func TestServiceProbes(t *testing.T) {
	tok := softhsm.NewTokenNoEnv(t)
	env := append(kmsdEnv(tok, t.TempDir()), "KMSD_REGION=ap-test-1", "KMSD_KEY_LIMIT=7")
	bootstrap(t, env)
	if out, err := kmsdCmd(t, append(env, "KMSD_REGION=Ap Guangzhou"), "check-config"); err == nil || !strings.Contains(out, "region") {
		t.Fatalf("check-config with a bad region: %v\n%s", err, out)
	}
	s := startKMSD(t, env)
	k := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	id, code := createTagged(t, k, "probe", map[string]string{"a": "b"})
	if code != "" {
		t.Fatal(code)
	}
	st, err := k.GetServiceStatus(tckms.NewGetServiceStatusRequest())
	if err != nil {
		t.Fatalf("GetServiceStatus: %s", sdkCode(err))
	}
	r := st.Response
	if !*r.ServiceEnabled || *r.InvalidType != 1 || *r.UserLevel != 0 || *r.CmkUserCount != 1 || *r.CmkLimit != 7 ||
		*r.ExclusiveHSMEnabled || *r.IsAllowedDataKeyHosted {
		t.Fatalf("GetServiceStatus: %s", st.ToJsonString())
	}
	nextSecond() // the same body ({}) as GetServiceStatus: one signature per second and action
	rg, err := k.GetRegions(tckms.NewGetRegionsRequest())
	if err != nil || len(rg.Response.Regions) != 1 || *rg.Response.Regions[0] != "ap-test-1" {
		t.Fatalf("GetRegions: %s %v", sdkCode(err), rg)
	}
	// Resource names carry the region.
	tg := tagClient(t, s, adminID, adminKey)
	req := tctag.NewDescribeResourceTagsByResourceIdsRequest()
	req.ServiceType, req.ResourcePrefix, req.ResourceRegion = sp("kms"), sp("key"), sp("ap-guangzhou")
	req.ResourceIds = []*string{sp(id)}
	if _, err := tg.DescribeResourceTagsByResourceIds(req); sdkCode(err) != "InvalidParameterValue" {
		t.Fatalf("another region: %q", sdkCode(err))
	}
	req.ResourceRegion = sp("ap-test-1")
	if resp, err := tg.DescribeResourceTagsByResourceIds(req); err != nil || len(resp.Response.Tags) != 1 {
		t.Fatalf("this region: %s %v", sdkCode(err), resp)
	}
	// The Tag service with the SDK's signature v1 methods too.
	for _, sm := range []string{"HmacSHA256", "HmacSHA1"} {
		cpf := profile.NewClientProfile()
		cpf.HttpProfile.Endpoint = strings.TrimPrefix(s.url, "http://")
		cpf.HttpProfile.Scheme = "HTTP"
		cpf.SignMethod = sm
		v1, err := tctag.NewClient(common.NewCredential(adminID, adminKey), "ap-test-1", cpf)
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := v1.DescribeResourceTagsByResourceIds(req); err != nil || len(resp.Response.Tags) != 1 {
			t.Fatalf("%s: %s %v", sm, sdkCode(err), resp)
		}
	}
	// Without kms:GetServiceStatus.
	enc := s.sdkCred(t, adminID, adminKey).create("enc", `{"effect":"allow","action":"kms:Encrypt","resource":"*"}`)
	if _, err := enc.kms.GetServiceStatus(tckms.NewGetServiceStatusRequest()); sdkCode(err) != "UnauthorizedOperation" {
		t.Fatalf("GetServiceStatus without the right: %q", sdkCode(err))
	}
	// DataKeyName and Description matter only to a hosted data key.
	gd := tckms.NewGenerateDataKeyRequest()
	gd.KeyId, gd.KeySpec, gd.DataKeyName, gd.Description = &id, sp("AES_256"), sp("dk"), sp("a data key")
	if _, err := k.GenerateDataKey(gd); err != nil {
		t.Fatalf("GenerateDataKey with DataKeyName and Description: %s", sdkCode(err))
	}
	gd.IsHostedByKms = ptrU64(1)
	if _, err := k.GenerateDataKey(gd); sdkCode(err) != "UnsupportedOperation" {
		t.Fatalf("GenerateDataKey hosted: %q", sdkCode(err))
	}
}

// A database written by the release before tags (the schema one step
// back: MACs, no key_tags; tags are the last migration step) is migrated,
// and its keys verify as they are: a key without tags has the MAC it had.
func TestUpgradeToTags(t *testing.T) {
	s, tok, data := newServer(t)
	env := kmsdEnv(tok, data)
	key := s.createKey("before-tags")
	s.stop()
	db, err := sql.Open("sqlite", filepath.Join(data, "kms.db"))
	if err != nil {
		t.Fatal(err)
	}
	var version int
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DROP TABLE key_tags`, `PRAGMA user_version = ` + strconv.Itoa(version-1)} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	s = startKMSD(t, env)
	if c := s.encryptCode(t, key, adminID, adminKey); c != "" {
		t.Fatalf("a key sealed before tags: %q", c)
	}
	if n := s.metric(t, "kmsd_integrity_failing_rows"); n != 0 {
		t.Fatalf("kmsd_integrity_failing_rows %v", n)
	}
	if code := modifyTags(tagClient(t, s, adminID, adminKey), key, map[string]string{"since": "upgrade"}); code != "" {
		t.Fatalf("tagging it: %q", code)
	}
}

// kmsctl's tag commands against the real server: what `kmsctl tag` sets
// and deletes, the official Tag SDK reads back, and `kmsctl tags` lists.
func TestKmsctlTags(t *testing.T) {
	s, _, _ := newServer(t)
	tg := tagClient(t, s, adminID, adminKey)
	keyID, code := createTagged(t, sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey), "ctl-tags", map[string]string{"old": "1"})
	if code != "" {
		t.Fatalf("CreateKey: %s", code)
	}
	ctl := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "kmsctl"), append([]string{"-endpoint", s.url}, args...)...)
		cmd.Env = append(os.Environ(), "TENCENTCLOUD_SECRET_ID="+adminID, "TENCENTCLOUD_SECRET_KEY="+adminKey)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := ctl("tag", "-key-id", keyID, "-set", "team=pay", "-set", "env=a=b", "-delete", "old"); err != nil {
		t.Fatalf("kmsctl tag: %v\n%s", err, out)
	}
	if got, code := keyTags(t, tg, keyID); code != "" || len(got) != 2 || got["team"] != "pay" || got["env"] != "a=b" {
		t.Fatalf("tags after kmsctl tag: %v %s", got, code)
	}
	out, err := ctl("tags", "-key-id", keyID)
	if err != nil {
		t.Fatalf("kmsctl tags: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := map[string]string{"team": "pay", "env": "a=b"}
	if len(lines) != len(want) {
		t.Fatalf("kmsctl tags printed %q", out)
	}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) != 2 || want[f[0]] != f[1] {
			t.Fatalf("kmsctl tags printed %q", out)
		}
	}
	for _, bad := range [][]string{
		{"tag", "-key-id", keyID},                      // nothing to do
		{"tag", "-key-id", keyID, "-set", "novalue"},   // not KEY=VALUE
		{"tag", "-key-id", "not-a-key", "-set", "a=b"}, // refused by kmsd
	} {
		if out, err := ctl(bad...); err == nil {
			t.Fatalf("kmsctl %v succeeded: %s", bad, out)
		}
	}
}
