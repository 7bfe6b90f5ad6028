package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"hsmkms/kms"
)

// awsTagFake records the tags the AWS API hands the domain and answers
// with tags and err.
type awsTagFake struct {
	*fakeKMS
	set    []kms.Tag
	remove []string
	tags   []kms.Tag
	called bool
}

func (f *awsTagFake) TagKey(_ context.Context, _ string, tags []kms.Tag) error {
	f.set, f.called = tags, true
	return f.err
}

func (f *awsTagFake) UntagKey(_ context.Context, _ string, keys []string) error {
	f.remove, f.called = keys, true
	return f.err
}

func (f *awsTagFake) KeyTags(context.Context, string) ([]kms.Tag, error) {
	f.called = true
	return f.tags, f.err
}

func (f *awsTagFake) CreateKey(_ context.Context, in kms.CreateKeyInput) (kms.KeyMetadata, error) {
	f.set, f.called = in.Tags, true
	return kms.KeyMetadata{KeyID: awsAsymKey, KeyUsage: kms.DefaultKeyUsage, KeyState: kms.StateEnabled}, f.err
}

// The AWS API's tag actions: AWS's shapes to the domain's tags, the
// domain's refusals to AWS's TagException and LimitExceededException, and
// ListResourceTags' pages.
func TestAWSTagsEdge(t *testing.T) {
	k := `"KeyId":"` + awsAsymKey + `"`
	three := []kms.Tag{{Key: "a", Value: "1"}, {Key: "b", Value: ""}, {Key: "c", Value: "3"}}
	limitErr := &kms.TagError{Code: "LimitExceeded.TagNumPerResource", Msg: "a key carries at most 50 tags"}
	rows := []struct {
		name, action, body string
		domainErr          error
		tags               []kms.Tag
		typ                string // "" for HTTP 200
		want               string // the domain's input, or the reply
	}{
		{name: "set", action: "TagResource", body: `{` + k + `,"Tags":[{"TagKey":"env","TagValue":"prod"},{"TagKey":"e","TagValue":""}]}`, want: "[{env prod} {e }]"},
		{name: "no Tags", action: "TagResource", body: `{` + k + `}`, typ: "ValidationException"},
		{name: "no TagValue", action: "TagResource", body: `{` + k + `,"Tags":[{"TagKey":"env"}]}`, typ: "ValidationException"},
		{name: "aws: prefix", action: "TagResource", body: `{` + k + `,"Tags":[{"TagKey":"AWS:x","TagValue":"v"}]}`, typ: "TagException"},
		{name: "domain refuses a tag", action: "TagResource", body: `{` + k + `,"Tags":[{"TagKey":"a*","TagValue":"v"}]}`,
			domainErr: fmt.Errorf("tag: %w", &kms.TagError{Code: "InvalidParameterValue.TagKeyCharacterIllegal", Msg: "tag key \"a*\": only letters..."}), typ: "TagException"},
		{name: "domain limit", action: "TagResource", body: `{` + k + `,"Tags":[{"TagKey":"a","TagValue":"v"}]}`, domainErr: limitErr, typ: "LimitExceededException"},
		{name: "no key", action: "TagResource", body: `{"Tags":[]}`, typ: "ValidationException"},
		{name: "remove", action: "UntagResource", body: `{` + k + `,"TagKeys":["a","b"]}`, want: "[a b]"},
		{name: "no TagKeys", action: "UntagResource", body: `{` + k + `}`, typ: "ValidationException"},
		{name: "all", action: "ListResourceTags", body: `{` + k + `}`, tags: three, want: `{"Tags":[{"TagKey":"a","TagValue":"1"},{"TagKey":"b","TagValue":""},{"TagKey":"c","TagValue":"3"}],"Truncated":false}`},
		{name: "page 1", action: "ListResourceTags", body: `{` + k + `,"Limit":2}`, tags: three, want: `{"Tags":[{"TagKey":"a","TagValue":"1"},{"TagKey":"b","TagValue":""}],"NextMarker":"2","Truncated":true}`},
		{name: "page 2", action: "ListResourceTags", body: `{` + k + `,"Limit":2,"Marker":"2"}`, tags: three, want: `{"Tags":[{"TagKey":"c","TagValue":"3"}],"Truncated":false}`},
		{name: "past the end", action: "ListResourceTags", body: `{` + k + `,"Marker":"9"}`, tags: three, want: `{"Tags":[],"Truncated":false}`},
		{name: "none", action: "ListResourceTags", body: `{` + k + `}`, want: `{"Tags":[],"Truncated":false}`},
		{name: "Limit 51", action: "ListResourceTags", body: `{` + k + `,"Limit":51}`, typ: "ValidationException"},
		{name: "bad Marker", action: "ListResourceTags", body: `{` + k + `,"Marker":"x"}`, typ: "InvalidMarkerException"},
		{name: "with Tags", action: "CreateKey", body: `{"Tags":[{"TagKey":"team","TagValue":"billing"}]}`, want: "[{team billing}]"},
		{name: "with aws: Tags", action: "CreateKey", body: `{"Tags":[{"TagKey":"aws:x","TagValue":"v"}]}`, typ: "TagException"},
	}
	now := time.Now()
	for _, row := range rows {
		t.Run(row.action+"/"+row.name, func(t *testing.T) {
			f := &awsTagFake{fakeKMS: &fakeKMS{err: row.domainErr}, tags: row.tags}
			s := awsTestServer(f, Config{Clock: func() time.Time { return now }})
			st, e, rec := awsReply(t, s, awsTestRequest(t, row.action, row.body, now, nil))
			if row.typ != "" {
				if st != 400 || e.Type != row.typ || e.Message == "" {
					t.Fatalf("HTTP %d %+v, want 400 %s", st, e, row.typ)
				}
				if row.domainErr == nil && f.called {
					t.Fatal("a refused request reached the domain")
				}
				return
			}
			if st != 200 {
				t.Fatalf("HTTP %d: %s", st, rec.Body.String())
			}
			got := rec.Body.String()
			switch row.action {
			case "TagResource", "CreateKey":
				got = fmt.Sprint(f.set)
			case "UntagResource":
				got = fmt.Sprint(f.remove)
			default:
				var v any
				if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
					t.Fatal(err)
				}
				b, _ := json.Marshal(v)
				var w any
				_ = json.Unmarshal([]byte(row.want), &w)
				wb, _ := json.Marshal(w)
				got, row.want = string(b), string(wb)
			}
			if got != row.want {
				t.Fatalf("got %s, want %s", got, row.want)
			}
		})
	}
}
