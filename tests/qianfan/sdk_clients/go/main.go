// Drives the official Qianfan Go SDK for tests/qianfan/test_qianfan_sdks.py: one request
// per stdin line (JSON), one JSON line back on stdout with what the SDK returned or raised.
//
//	{"auth": "oauth"|"iam", "ak", "sk", "kind": "chat"|"completions", "endpoint" | "model",
//	 "text", "stream", "temperature"?, "max_output_tokens"?, "top_k"?, "stop"?}
//
// The SDK keeps its credentials in one global config; each request sets them there first.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/baidubce/bce-qianfan-sdk/go/qianfan"
)

type request struct {
	Auth            string   `json:"auth"`
	AK              string   `json:"ak"`
	SK              string   `json:"sk"`
	Kind            string   `json:"kind"`
	Endpoint        string   `json:"endpoint"`
	Model           string   `json:"model"`
	Text            string   `json:"text"`
	Stream          bool     `json:"stream"`
	Temperature     float64  `json:"temperature"`
	MaxOutputTokens int      `json:"max_output_tokens"`
	TopK            int      `json:"top_k"`
	Stop            []string `json:"stop"`
}

type reply struct {
	OK        bool                     `json:"ok"`
	Responses []*qianfan.ModelResponse `json:"responses,omitempty"`
	Error     string                   `json:"error,omitempty"`
	Code      int                      `json:"code,omitempty"`
}

func options(r request) []qianfan.Option {
	if r.Model != "" {
		return []qianfan.Option{qianfan.WithModel(r.Model)}
	}
	return []qianfan.Option{qianfan.WithEndpoint(r.Endpoint)}
}

func call(ctx context.Context, r request) ([]*qianfan.ModelResponse, error) {
	cfg := qianfan.GetConfig()
	cfg.AK, cfg.SK, cfg.AccessKey, cfg.SecretKey = "", "", "", ""
	if r.Auth == "iam" {
		cfg.AccessKey, cfg.SecretKey = r.AK, r.SK
	} else {
		cfg.AK, cfg.SK = r.AK, r.SK
	}
	var stream *qianfan.ModelResponseStream
	var err error
	if r.Kind == "chat" {
		chat := qianfan.NewChatCompletion(options(r)...)
		req := &qianfan.ChatCompletionRequest{
			Messages:        []qianfan.ChatCompletionMessage{qianfan.ChatCompletionUserMessage(r.Text)},
			Temperature:     r.Temperature,
			MaxOutputTokens: r.MaxOutputTokens,
			Stop:            r.Stop,
		}
		if !r.Stream {
			resp, err := chat.Do(ctx, req)
			return []*qianfan.ModelResponse{resp}, err
		}
		stream, err = chat.Stream(ctx, req)
	} else {
		comp := qianfan.NewCompletion(options(r)...)
		req := &qianfan.CompletionRequest{Prompt: r.Text, Temperature: r.Temperature, TopK: r.TopK,
			MaxOutputTokens: r.MaxOutputTokens, Stop: r.Stop}
		if !r.Stream {
			resp, err := comp.Do(ctx, req)
			return []*qianfan.ModelResponse{resp}, err
		}
		stream, err = comp.Stream(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	var out []*qianfan.ModelResponse
	for { // the README's loop: Recv until IsEnd
		resp, err := stream.Recv()
		if err != nil {
			return out, err
		}
		if stream.IsEnd {
			return out, nil
		}
		out = append(out, resp)
	}
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	for in.Scan() {
		var r request
		var rep reply
		if err := json.Unmarshal(in.Bytes(), &r); err != nil {
			rep.Error = err.Error()
		} else if resps, err := call(context.Background(), r); err != nil {
			rep.Error = err.Error()
			var apiErr *qianfan.APIError
			if errors.As(err, &apiErr) {
				rep.Code = apiErr.Code
			}
		} else {
			rep.OK, rep.Responses = true, resps
		}
		line, _ := json.Marshal(rep)
		fmt.Println(string(line))
	}
}
