package httpapi

import (
	"context"
	"strconv"
	"strings"

	"hsmkms/kms"
)

// Resource tags through the AWS KMS API: TagResource, UntagResource,
// ListResourceTags and CreateKey's Tags, over the domain's key tags
// (kms/tags.go), the same tags the Tencent Tag service shows. Policy
// words are the tag service's: TagResource (and CreateKey with Tags) is
// tag:TagResources, UntagResource tag:UnTagResources, ListResourceTags
// tag:DescribeResourceTagsByResourceIds ("kms:*" includes them). Limits
// are the domain's: 50 tags per key, 10 per TagResource or UntagResource
// call, keys of 1-127 and values of 0-255 characters of letters, digits,
// spaces and + - = . _ : / @; the prefixes aws: (AWS's) and qcloud,
// tencent, project (Tencent's) are reserved.

// AWSTags is the part of the domain that serves tags; *kms.Service
// implements it.
type AWSTags interface {
	TagKey(ctx context.Context, keyID string, tags []kms.Tag) error
	UntagKey(ctx context.Context, keyID string, tagKeys []string) error
	KeyTags(ctx context.Context, keyID string) ([]kms.Tag, error)
}

// awsTaggedKey resolves the key a tag action names (KeyId: an id, ARN or
// alias) and returns the domain's tag operations with it.
func (s *Server) awsTaggedKey(ctx context.Context, ref *string) (AWSTags, string, error) {
	id, err := s.resolveKey(ctx, "keyId", ref)
	if err != nil {
		return nil, "", err
	}
	t, ok := s.kms.(AWSTags)
	if !ok {
		return nil, "", unsupported("tags")
	}
	return t, id, nil
}

// awsTag is one AWS tag.
type awsTag struct {
	TagKey   *string `json:"TagKey"`
	TagValue *string `json:"TagValue"`
}

func awsReservedTagKey(k string) error {
	if len(k) >= 4 && strings.EqualFold(k[:4], "aws:") {
		return awsErrorf("TagException", "tag key "+strconv.Quote(truncate(k, 128))+": the prefix aws: is reserved")
	}
	return nil
}

// awsDomainTags checks the shape of AWS tags (TagKey and TagValue present,
// no aws: prefix); the domain checks the rest.
func awsDomainTags(in []awsTag) ([]kms.Tag, error) {
	out := make([]kms.Tag, 0, len(in))
	for _, t := range in {
		if t.TagKey == nil || t.TagValue == nil {
			return nil, awsErrorf("ValidationException", "each tag needs a TagKey and a TagValue")
		}
		if err := awsReservedTagKey(*t.TagKey); err != nil {
			return nil, err
		}
		out = append(out, kms.Tag{Key: *t.TagKey, Value: *t.TagValue})
	}
	return out, nil
}

// TagResource

type awsTagResourceRequest struct {
	KeyId *string  `json:"KeyId"`
	Tags  []awsTag `json:"Tags"`
}

func (s *Server) awsTagResource(ctx context.Context, req *awsTagResourceRequest) (*awsEmptyResponse, error) {
	if req.Tags == nil {
		return nil, awsErrorf("ValidationException", "1 validation error detected: Value null at 'tags' failed to satisfy constraint: Member must not be null")
	}
	tags, err := awsDomainTags(req.Tags)
	if err != nil {
		return nil, err
	}
	a, id, err := s.awsTaggedKey(ctx, req.KeyId)
	if err != nil {
		return nil, err
	}
	if err := a.TagKey(ctx, id, tags); err != nil {
		return nil, err
	}
	return &awsEmptyResponse{}, nil
}

// UntagResource

type awsUntagResourceRequest struct {
	KeyId   *string  `json:"KeyId"`
	TagKeys []string `json:"TagKeys"`
}

func (s *Server) awsUntagResource(ctx context.Context, req *awsUntagResourceRequest) (*awsEmptyResponse, error) {
	if req.TagKeys == nil {
		return nil, awsErrorf("ValidationException", "1 validation error detected: Value null at 'tagKeys' failed to satisfy constraint: Member must not be null")
	}
	a, id, err := s.awsTaggedKey(ctx, req.KeyId)
	if err != nil {
		return nil, err
	}
	if err := a.UntagKey(ctx, id, req.TagKeys); err != nil {
		return nil, err
	}
	return &awsEmptyResponse{}, nil
}

// ListResourceTags

type awsListResourceTagsRequest struct {
	KeyId  *string `json:"KeyId"`
	Limit  *int64  `json:"Limit"`
	Marker *string `json:"Marker"`
}

type awsTagOut struct {
	TagKey   string `json:"TagKey"`
	TagValue string `json:"TagValue"`
}

type awsListResourceTagsResponse struct {
	Tags       []awsTagOut `json:"Tags"`
	NextMarker string      `json:"NextMarker,omitempty"`
	Truncated  bool        `json:"Truncated"`
}

func (s *Server) awsListResourceTags(ctx context.Context, req *awsListResourceTagsRequest) (*awsListResourceTagsResponse, error) {
	page, err := awsPage(req.Limit, req.Marker, 50, 50)
	if err != nil {
		return nil, err
	}
	a, id, err := s.awsTaggedKey(ctx, req.KeyId)
	if err != nil {
		return nil, err
	}
	tags, err := a.KeyTags(ctx, id)
	if err != nil {
		return nil, err
	}
	out := &awsListResourceTagsResponse{Tags: []awsTagOut{}}
	if page.Offset > len(tags) {
		page.Offset = len(tags)
	}
	end := min(page.Offset+page.Limit, len(tags))
	for _, t := range tags[page.Offset:end] {
		out.Tags = append(out.Tags, awsTagOut{TagKey: t.Key, TagValue: t.Value})
	}
	if end < len(tags) {
		out.NextMarker, out.Truncated = strconv.Itoa(end), true
	}
	return out, nil
}
