//! The endpoints llmedge routes by model, and what each needs: which API's conventions it
//! follows (OpenAI's, or Anthropic's for Messages), whether its stream carries chat chunks,
//! Responses events or Messages events, how usage is reported. Pure: one table instead of a
//! handler per endpoint.

/// The API a client or an upstream speaks: its paths, error shape and stream events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Api {
    #[default]
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

/// An endpoint routed by the request's `model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Moderations,
    Rerank,
    Score,
    ImageGenerations,
    ImageEdits,
    AudioSpeech,
    AudioTranscriptions,
    AudioTranslations,
    /// Anthropic's `POST /v1/messages`.
    Messages,
    /// Anthropic's `POST /v1/messages/count_tokens`.
    CountTokens,
}

/// How a successful `text/event-stream` answer of an endpoint is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `chat.completion.chunk` / `text_completion` objects ending with `data: [DONE]`.
    Chunks,
    /// Responses API events (`response.created` … `response.completed`), `model` and `usage`
    /// inside their `response` object.
    ResponsesEvents,
    /// Anthropic Messages events (`message_start` … `message_stop`), `model` inside the
    /// `message_start` message, usage in `message_start` and `message_delta`.
    MessagesEvents,
}

const ALL: [Endpoint; 14] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Embeddings,
    Endpoint::Responses,
    Endpoint::Moderations,
    Endpoint::Rerank,
    Endpoint::Score,
    Endpoint::ImageGenerations,
    Endpoint::ImageEdits,
    Endpoint::AudioSpeech,
    Endpoint::AudioTranscriptions,
    Endpoint::AudioTranslations,
    Endpoint::Messages,
    Endpoint::CountTokens,
];

impl Endpoint {
    /// The endpoint a `POST` to `path` is for.
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/completions" => Self::Completions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/responses" => Self::Responses,
            "/v1/moderations" => Self::Moderations,
            "/v1/rerank" | "/v2/rerank" => Self::Rerank,
            "/v1/score" => Self::Score,
            "/v1/images/generations" => Self::ImageGenerations,
            "/v1/images/edits" => Self::ImageEdits,
            "/v1/audio/speech" => Self::AudioSpeech,
            "/v1/audio/transcriptions" => Self::AudioTranscriptions,
            "/v1/audio/translations" => Self::AudioTranslations,
            "/v1/messages" => Self::Messages,
            "/v1/messages/count_tokens" => Self::CountTokens,
            _ => return None,
        })
    }

    /// Its canonical path.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Responses => "/v1/responses",
            Self::Moderations => "/v1/moderations",
            Self::Rerank => "/v1/rerank",
            Self::Score => "/v1/score",
            Self::ImageGenerations => "/v1/images/generations",
            Self::ImageEdits => "/v1/images/edits",
            Self::AudioSpeech => "/v1/audio/speech",
            Self::AudioTranscriptions => "/v1/audio/transcriptions",
            Self::AudioTranslations => "/v1/audio/translations",
            Self::Messages => "/v1/messages",
            Self::CountTokens => "/v1/messages/count_tokens",
        }
    }

    /// Its name in `routes[].endpoints`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Moderations => "moderations",
            Self::Rerank => "rerank",
            Self::Score => "score",
            Self::ImageGenerations => "images_generations",
            Self::ImageEdits => "images_edits",
            Self::AudioSpeech => "audio_speech",
            Self::AudioTranscriptions => "audio_transcriptions",
            Self::AudioTranslations => "audio_translations",
            Self::Messages => "messages",
            Self::CountTokens => "messages_count_tokens",
        }
    }

    /// The request body is `multipart/form-data` (an uploaded file) rather than JSON.
    pub fn multipart(self) -> bool {
        match self {
            Self::ImageEdits | Self::AudioTranscriptions | Self::AudioTranslations => true,
            Self::ChatCompletions
            | Self::Completions
            | Self::Embeddings
            | Self::Responses
            | Self::Moderations
            | Self::Rerank
            | Self::Score
            | Self::ImageGenerations
            | Self::AudioSpeech
            | Self::Messages
            | Self::CountTokens => false,
        }
    }

    /// Streams are rewritten event by event, and the gateway asks for their usage chunk.
    pub fn stream_kind(self) -> Option<StreamKind> {
        match self {
            Self::ChatCompletions | Self::Completions => Some(StreamKind::Chunks),
            Self::Responses => Some(StreamKind::ResponsesEvents),
            Self::Messages => Some(StreamKind::MessagesEvents),
            Self::CountTokens
            | Self::Embeddings
            | Self::Moderations
            | Self::Rerank
            | Self::Score
            | Self::ImageGenerations
            | Self::ImageEdits
            | Self::AudioSpeech
            | Self::AudioTranscriptions
            | Self::AudioTranslations => None,
        }
    }

    /// The request field that caps generated tokens, reserved against token limits: the
    /// endpoints that generate text are the ones whose streams are rewritten.
    pub fn completion_cap_fields(self) -> &'static [&'static str] {
        match self.stream_kind() {
            Some(StreamKind::Chunks) => &["max_completion_tokens", "max_tokens"],
            Some(StreamKind::ResponsesEvents) => &["max_output_tokens"],
            Some(StreamKind::MessagesEvents) => &["max_tokens"],
            None => &[],
        }
    }

    /// Whether the endpoint generates tokens (a request without a cap reserves the default).
    pub fn generates_tokens(self) -> bool {
        !self.completion_cap_fields().is_empty()
    }

    /// The API whose conventions (errors, events) the endpoint's clients expect.
    pub fn api(self) -> Api {
        match self {
            Self::Messages | Self::CountTokens => Api::Anthropic,
            _ => Api::OpenAi,
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of endpoints, as `routes[].endpoints` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointSet(u16);

impl EndpointSet {
    pub fn all() -> Self {
        Self(ALL.iter().fold(0, |m, e| m | e.bit()))
    }

    pub fn contains(self, e: Endpoint) -> bool {
        self.0 & e.bit() != 0
    }

    /// Parses config names; `images`, `audio` and `messages` (with its `count_tokens`) stand for
    /// their whole families. The error is
    /// the list of valid names.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, (String, String)> {
        let mut set = 0;
        for n in names {
            let add = match n {
                "images" => Endpoint::ImageGenerations.bit() | Endpoint::ImageEdits.bit(),
                "messages" => Endpoint::Messages.bit() | Endpoint::CountTokens.bit(),
                "audio" => {
                    Endpoint::AudioSpeech.bit()
                        | Endpoint::AudioTranscriptions.bit()
                        | Endpoint::AudioTranslations.bit()
                }
                _ => match ALL.iter().find(|e| e.name() == n) {
                    Some(e) => e.bit(),
                    None => {
                        let known: Vec<&str> = ALL.iter().map(|e| e.name()).collect();
                        return Err((
                            n.to_string(),
                            format!("{}, images, audio", known.join(", ")),
                        ));
                    }
                },
            };
            set |= add;
        }
        Ok(Self(set))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_a_path_and_a_config_name_that_round_trip() {
        for e in ALL {
            assert!(EndpointSet::parse([e.name()]).unwrap().contains(e));
        }
        let m = EndpointSet::parse(["messages"]).unwrap();
        assert!(
            m.contains(Endpoint::CountTokens),
            "count_tokens goes with messages"
        );
        assert!(!m.contains(Endpoint::ChatCompletions));
        assert_eq!(Endpoint::CountTokens.api(), Api::Anthropic);
        assert_eq!(
            Endpoint::from_path("/v1/audio/transcriptions"),
            Some(Endpoint::AudioTranscriptions)
        );
        assert_eq!(Endpoint::from_path("/v1/nope"), None);
        for e in ALL {
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
        }
        assert!(EndpointSet::all().contains(Endpoint::Score));
    }

    #[test]
    fn families_and_unknown_names() {
        let s = EndpointSet::parse(["chat", "audio"]).unwrap();
        assert!(s.contains(Endpoint::ChatCompletions));
        assert!(s.contains(Endpoint::AudioTranslations));
        assert!(!s.contains(Endpoint::Embeddings));
        let (bad, known) = EndpointSet::parse(["chat", "chats"]).unwrap_err();
        assert_eq!(bad, "chats");
        assert!(known.starts_with("chat, completions, embeddings, responses"));
    }
}
