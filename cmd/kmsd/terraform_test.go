package main_test

// The Terraform provider's calls for tencentcloud_kms_key
// (tencentcloudstack/terraform-provider-tencentcloud,
// tencentcloud/services/kms/resource_tc_kms_key.go), replayed in its order
// with the official Go SDK against the real kmsd: create with tags, read
// (DescribeKey and the Tag service), update (description, alias, state,
// rotation, tags), destroy.

import (
	"encoding/json"
	"maps"
	"strconv"
	"testing"
	"time"

	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"
	tctag "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/tag/v20180813"
)

// tfProvider replays the provider's calls. The official SDK signs neither
// the action nor a nonce, so two calls with one body within one second
// carry one signature, which kmsd binds to the first action it is used
// with (README, "Authentication rules"); step waits for the next second
// before a call whose body was sent this second under another action,
// unless the call only reads metadata, which kmsd serves with a bound
// signature (the provider makes such calls back to back: see
// OPERATIONS.md, "Terraform").
type tfProvider struct {
	t     *testing.T
	kms   *tckms.Client
	tag   *tctag.Client
	sent  map[string]string // second + body -> action
	calls []string
	waits int
}

func (p *tfProvider) step(action string, req any) {
	b, _ := json.Marshal(req)
	key := func() string { return strconv.FormatInt(time.Now().Unix(), 10) + string(b) }
	// The signature stays bound to the first action; a read of metadata
	// is served with a signature bound to another action (httpapi,
	// action.metadataRead), a write is not.
	if a, ok := p.sent[key()]; ok && a != action && !tfMetadataReads[action] {
		nextSecond()
		p.waits++
	}
	if p.sent == nil {
		p.sent = map[string]string{}
	}
	if _, ok := p.sent[key()]; !ok {
		p.sent[key()] = action
	}
	p.calls = append(p.calls, action)
}

// tfMetadataReads are the provider's calls that read metadata only.
var tfMetadataReads = map[string]bool{"DescribeKey": true, "DescribeKeys": true, "GetKeyRotationStatus": true,
	"ListKeyDetail": true, "ListKeys": true, "DescribeResourceTagsByResourceIds": true, "GetResources": true}

func (p *tfProvider) must(action string, err error) {
	p.t.Helper()
	if err != nil {
		p.t.Fatalf("%s: %s (%v)", action, sdkCode(err), err)
	}
}

func (p *tfProvider) keyOnly(action string, keyID string, f func(id *string) error) {
	p.t.Helper()
	req := struct{ KeyId *string }{&keyID}
	p.step(action, req)
	p.must(action, f(&keyID))
}

func (p *tfProvider) describe(keyID string) *tckms.KeyMetadata {
	p.t.Helper()
	req := tckms.NewDescribeKeyRequest()
	req.KeyId = &keyID
	p.step("DescribeKey", req)
	resp, err := p.kms.DescribeKey(req)
	p.must("DescribeKey", err)
	return resp.Response.KeyMetadata
}

// read is resourceTencentCloudKmsKeyRead: DescribeKey, then the tags by
// the key's ResourceId.
func (p *tfProvider) read(keyID string) (*tckms.KeyMetadata, map[string]string) {
	p.t.Helper()
	md := p.describe(keyID)
	req := tctag.NewDescribeResourceTagsByResourceIdsRequest()
	req.ServiceType, req.ResourcePrefix, req.ResourceRegion = sp("kms"), sp("key"), sp("ap-guangzhou")
	req.ResourceIds = []*string{md.ResourceId}
	limit, offset := uint64(50), uint64(0)
	req.Limit, req.Offset = &limit, &offset
	tags := map[string]string{}
	for {
		p.step("DescribeResourceTagsByResourceIds", req)
		resp, err := p.tag.DescribeResourceTagsByResourceIds(req)
		p.must("DescribeResourceTagsByResourceIds", err)
		for _, t := range resp.Response.Tags {
			if *t.ResourceId == *md.ResourceId {
				tags[*t.TagKey] = *t.TagValue
			}
		}
		if uint64(len(resp.Response.Tags)) != limit {
			break
		}
		offset += limit
	}
	return md, tags
}

// modifyTags is TagService.ModifyTags on BuildTagResourceName("kms",
// "key", region, ResourceId) = qcs::kms:<region>:uin/:key/<ResourceId>.
func (p *tfProvider) modifyTags(resourceID string, replace map[string]string, del []string) {
	p.t.Helper()
	req := tctag.NewModifyResourceTagsRequest()
	req.Resource = sp("qcs::kms:ap-guangzhou:uin/:key/" + resourceID)
	for k, v := range replace {
		req.ReplaceTags = append(req.ReplaceTags, &tctag.Tag{TagKey: sp(k), TagValue: sp(v)})
	}
	for _, k := range del {
		req.DeleteTags = append(req.DeleteTags, &tctag.TagKeyObject{TagKey: sp(k)})
	}
	p.step("ModifyResourceTags", req)
	_, err := p.tag.ModifyResourceTags(req)
	p.must("ModifyResourceTags", err)
}

func TestTerraformKmsKeyLifecycle(t *testing.T) {
	s, _, _ := newServer(t)
	p := &tfProvider{t: t, kms: sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey), tag: tagClient(t, s, adminID, adminKey)}

	// resource "tencentcloud_kms_key" "k" {
	//   alias = "tf-key"  description = "by terraform"  key_rotation_enabled = true
	//   is_enabled = true  tags = { team = "pay", env = "prod" } }
	// Create: CreateKey (Type 1), [DisableKey if !is_enabled],
	// EnableKeyRotation, [ArchiveKey], DescribeKey + ModifyResourceTags, Read.
	create := tckms.NewCreateKeyRequest()
	create.Type, create.Alias, create.Description, create.KeyUsage = ptrU64(1), sp("tf-key"), sp("by terraform"), sp("ENCRYPT_DECRYPT")
	p.step("CreateKey", create)
	cr, err := p.kms.CreateKey(create)
	p.must("CreateKey", err)
	id := *cr.Response.KeyId
	p.keyOnly("EnableKeyRotation", id, func(k *string) error {
		r := tckms.NewEnableKeyRotationRequest()
		r.KeyId = k
		_, err := p.kms.EnableKeyRotation(r)
		return err
	})
	md := p.describe(id)
	p.modifyTags(*md.ResourceId, map[string]string{"team": "pay", "env": "prod"}, nil)
	md, tags := p.read(id)
	if *md.Alias != "tf-key" || *md.Description != "by terraform" || *md.KeyState != "Enabled" || !*md.KeyRotationEnabled ||
		!maps.Equal(tags, map[string]string{"team": "pay", "env": "prod"}) {
		t.Fatalf("after create: %s %s %s %v %v", *md.Alias, *md.Description, *md.KeyState, *md.KeyRotationEnabled, tags)
	}

	// Update: description, alias, is_enabled = false, rotation off, tags
	// { team = "payments", owner = "zhang" } (env removed).
	ud := tckms.NewUpdateKeyDescriptionRequest()
	ud.KeyId, ud.Description = &id, sp("changed by terraform")
	p.step("UpdateKeyDescription", ud)
	_, err = p.kms.UpdateKeyDescription(ud)
	p.must("UpdateKeyDescription", err)
	ua := tckms.NewUpdateAliasRequest()
	ua.KeyId, ua.Alias = &id, sp("tf-key-renamed")
	p.step("UpdateAlias", ua)
	_, err = p.kms.UpdateAlias(ua)
	p.must("UpdateAlias", err)
	p.keyOnly("DisableKey", id, func(k *string) error {
		r := tckms.NewDisableKeyRequest()
		r.KeyId = k
		_, err := p.kms.DisableKey(r)
		return err
	})
	p.keyOnly("DisableKeyRotation", id, func(k *string) error {
		r := tckms.NewDisableKeyRotationRequest()
		r.KeyId = k
		_, err := p.kms.DisableKeyRotation(r)
		return err
	})
	md = p.describe(id)
	p.modifyTags(*md.ResourceId, map[string]string{"team": "payments", "owner": "zhang"}, []string{"env"})
	md, tags = p.read(id)
	if *md.Alias != "tf-key-renamed" || *md.Description != "changed by terraform" || *md.KeyState != "Disabled" || *md.KeyRotationEnabled ||
		!maps.Equal(tags, map[string]string{"team": "payments", "owner": "zhang"}) {
		t.Fatalf("after update: %s %s %s %v %v", *md.Alias, *md.Description, *md.KeyState, *md.KeyRotationEnabled, tags)
	}
	// is_enabled = true again (the provider's updateIsEnabled), then a
	// plan that changes nothing: Read only.
	p.keyOnly("EnableKey", id, func(k *string) error {
		r := tckms.NewEnableKeyRequest()
		r.KeyId = k
		_, err := p.kms.EnableKey(r)
		return err
	})
	if md, _ = p.read(id); *md.KeyState != "Enabled" {
		t.Fatalf("after enable: %s", *md.KeyState)
	}
	// is_archived = true (updateIsArchived), then back: CancelKeyArchive.
	p.keyOnly("ArchiveKey", id, func(k *string) error {
		r := tckms.NewArchiveKeyRequest()
		r.KeyId = k
		_, err := p.kms.ArchiveKey(r)
		return err
	})
	if md, _ = p.read(id); *md.KeyState != "Archived" {
		t.Fatalf("after archive: %s", *md.KeyState)
	}
	p.keyOnly("CancelKeyArchive", id, func(k *string) error {
		r := tckms.NewCancelKeyArchiveRequest()
		r.KeyId = k
		_, err := p.kms.CancelKeyArchive(r)
		return err
	})
	if md, _ = p.read(id); *md.KeyState != "Enabled" {
		t.Fatalf("after cancelling the archive: %s", *md.KeyState)
	}

	// Destroy: DisableKey (is_enabled), ScheduleKeyDeletion(7), DescribeKey
	// until PendingDelete.
	p.keyOnly("DisableKey", id, func(k *string) error {
		r := tckms.NewDisableKeyRequest()
		r.KeyId = k
		_, err := p.kms.DisableKey(r)
		return err
	})
	del := tckms.NewScheduleKeyDeletionRequest()
	del.KeyId, del.PendingWindowInDays = &id, ptrU64(7)
	p.step("ScheduleKeyDeletion", del)
	_, err = p.kms.ScheduleKeyDeletion(del)
	p.must("ScheduleKeyDeletion", err)
	if md = p.describe(id); *md.KeyState != "PendingDelete" {
		t.Fatalf("after destroy: %s", *md.KeyState)
	}
	// The tags of a key pending deletion are still readable (a refresh
	// during the window).
	if _, tags = p.read(id); tags["team"] != "payments" {
		t.Fatalf("tags after destroy: %v", tags)
	}
	t.Logf("replayed %d calls (%d waits for the next second): %v", len(p.calls), p.waits, p.calls)
}

func ptrU64(v uint64) *uint64 { return &v }
