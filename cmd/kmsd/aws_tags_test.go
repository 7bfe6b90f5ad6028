package main_test

// Resource tags through the AWS KMS API with the AWS SDK for Go v2
// against the real kmsd: CreateKey with Tags, TagResource, UntagResource,
// ListResourceTags (pages), the limits with AWS's __types, and the tag:
// policy words.

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

func awsTags(kv ...string) []types.Tag {
	var out []types.Tag
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, types.Tag{TagKey: aws.String(kv[i]), TagValue: aws.String(kv[i+1])})
	}
	return out
}

// listAWSTags returns all the tags of a key, "k=v" in order, reading
// pages of limit.
func listAWSTags(t *testing.T, c *awskms.Client, id string, limit int32) []string {
	t.Helper()
	var out []string
	in := &awskms.ListResourceTagsInput{KeyId: aws.String(id)}
	if limit > 0 {
		in.Limit = aws.Int32(limit)
	}
	for range 100 {
		r, err := c.ListResourceTags(context.Background(), in)
		if err != nil {
			t.Fatalf("ListResourceTags: %v", err)
		}
		for _, tg := range r.Tags {
			out = append(out, *tg.TagKey+"="+*tg.TagValue)
		}
		if !r.Truncated {
			return out
		}
		in.Marker = r.NextMarker
	}
	t.Fatal("ListResourceTags does not end")
	return nil
}

func TestAWSTags(t *testing.T) {
	s, _ := newAWSServer(t)
	ctx := context.Background()
	c := awsClient(s, adminID, adminKey)
	ck, err := c.CreateKey(ctx, &awskms.CreateKeyInput{Tags: awsTags("team", "billing", "env", "prod")})
	if err != nil {
		t.Fatalf("CreateKey with Tags: %v", err)
	}
	id := *ck.KeyMetadata.KeyId
	if got := fmt.Sprint(listAWSTags(t, c, id, 0)); got != "[env=prod team=billing]" {
		t.Fatalf("tags after CreateKey: %s", got)
	}
	if _, err := c.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/tagged"), TargetKeyId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.TagResource(ctx, &awskms.TagResourceInput{KeyId: aws.String("alias/tagged"), Tags: awsTags("env", "staging", "owner", "alice@example.com", "empty", "")}); err != nil {
		t.Fatalf("TagResource: %v", err)
	}
	if _, err := c.UntagResource(ctx, &awskms.UntagResourceInput{KeyId: aws.String(id), TagKeys: []string{"team", "not-there"}}); err != nil {
		t.Fatalf("UntagResource: %v", err)
	}
	if got := fmt.Sprint(listAWSTags(t, c, id, 2)); got != "[empty= env=staging owner=alice@example.com]" {
		t.Fatalf("tags after TagResource and UntagResource, in pages of 2: %s", got)
	}
	// The same tags through the Tencent Tag service, and the reverse.
	tg := tagClient(t, s, adminID, adminKey)
	if got, code := keyTags(t, tg, id); code != "" || fmt.Sprint(got) != "map[empty: env:staging owner:alice@example.com]" {
		t.Fatalf("the Tag service sees %v %s", got, code)
	}
	if code := modifyTags(tg, id, map[string]string{"from": "tencent"}, "empty"); code != "" {
		t.Fatalf("ModifyResourceTags: %s", code)
	}
	if got := fmt.Sprint(listAWSTags(t, c, id, 0)); got != "[env=staging from=tencent owner=alice@example.com]" {
		t.Fatalf("the AWS API sees %s after the Tag service's change", got)
	}
	r, err := c.ListResourceTags(ctx, &awskms.ListResourceTagsInput{KeyId: aws.String(id), Limit: aws.Int32(2)})
	if err != nil || !r.Truncated || r.NextMarker == nil || len(r.Tags) != 2 {
		t.Fatalf("a first page of 2: %v %+v", err, r)
	}

	// Refusals: AWS's reserved prefix and the domain's rules are
	// TagException, the limits LimitExceededException.
	for name, x := range map[string]struct {
		tags []types.Tag
		typ  string
	}{
		"the aws: prefix":     {awsTags("aws:owner", "x"), "TagException"},
		"a reserved prefix":   {awsTags("qcloud-x", "x"), "TagException"},
		"a character":         {awsTags("a*b", "x"), "TagException"},
		"an empty key":        {awsTags("", "x"), "TagException"},
		"a key of 128":        {awsTags(strings.Repeat("k", 128), "x"), "TagException"},
		"a duplicate":         {awsTags("a", "1", "a", "2"), "TagException"},
		"11 tags in one call": {awsTags("1", "", "2", "", "3", "", "4", "", "5", "", "6", "", "7", "", "8", "", "9", "", "10", "", "11", ""), "LimitExceededException"},
	} {
		_, err := c.TagResource(ctx, &awskms.TagResourceInput{KeyId: aws.String(id), Tags: x.tags})
		wantAWSErr(t, "TagResource with "+name, err, x.typ, 400)
	}
	for i := range 5 {
		var kv []string
		for j := range 10 {
			kv = append(kv, fmt.Sprintf("k%02d", i*10+j), "v")
		}
		_, err := c.TagResource(ctx, &awskms.TagResourceInput{KeyId: aws.String(id), Tags: awsTags(kv...)})
		if i < 4 {
			if err != nil {
				t.Fatalf("TagResource of 10 more: %v", err)
			}
			continue
		}
		wantAWSErr(t, "TagResource beyond 50 tags on a key", err, "LimitExceededException", 400)
	}
	if n := len(listAWSTags(t, c, id, 0)); n != 43 {
		t.Fatalf("%d tags, want 43 (the refused call changed nothing)", n)
	}
	_, err = c.TagResource(ctx, &awskms.TagResourceInput{KeyId: aws.String("11111111-2222-3333-4444-555555555555"), Tags: awsTags("a", "b")})
	wantAWSErr(t, "TagResource of no key", err, "NotFoundException", 400)
	_, err = c.ListResourceTags(ctx, &awskms.ListResourceTagsInput{KeyId: aws.String(id), Limit: aws.Int32(51)})
	wantAWSErr(t, "ListResourceTags with Limit 51", err, "ValidationException", 400)

	// Policy words: the tag service's.
	enc := s.sdkCred(t, adminID, adminKey).create("aws-no-tags", `{"effect":"allow","action":["kms:Encrypt","kms:CreateKey"],"resource":"*"}`)
	ce := awsClient(s, enc.id, enc.key)
	_, err = ce.TagResource(ctx, &awskms.TagResourceInput{KeyId: aws.String(id), Tags: awsTags("a", "b")})
	wantAWSErr(t, "TagResource without tag:TagResources", err, "AccessDeniedException", 400)
	_, err = ce.ListResourceTags(ctx, &awskms.ListResourceTagsInput{KeyId: aws.String(id)})
	wantAWSErr(t, "ListResourceTags without tag:DescribeResourceTagsByResourceIds", err, "AccessDeniedException", 400)
	_, err = ce.CreateKey(ctx, &awskms.CreateKeyInput{Tags: awsTags("a", "b")})
	wantAWSErr(t, "CreateKey with Tags without tag:TagResources", err, "AccessDeniedException", 400)
	if _, err := ce.CreateKey(ctx, &awskms.CreateKeyInput{}); err != nil {
		t.Fatalf("CreateKey without Tags with kms:CreateKey: %v", err)
	}
	tagger := s.sdkCred(t, adminID, adminKey).create("aws-tagger", `{"effect":"allow","action":["tag:TagResources","tag:DescribeResourceTagsByResourceIds"],"resource":"`+id+`"}`)
	ct := awsClient(s, tagger.id, tagger.key)
	if _, err := ct.TagResource(ctx, &awskms.TagResourceInput{KeyId: aws.String(id), Tags: awsTags("by", "tagger")}); err != nil {
		t.Fatalf("TagResource with tag:TagResources: %v", err)
	}
	if _, err := ct.ListResourceTags(ctx, &awskms.ListResourceTagsInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("ListResourceTags with tag:DescribeResourceTagsByResourceIds: %v", err)
	}
	_, err = ct.UntagResource(ctx, &awskms.UntagResourceInput{KeyId: aws.String(id), TagKeys: []string{"by"}})
	wantAWSErr(t, "UntagResource without tag:UnTagResources", err, "AccessDeniedException", 400)
}
