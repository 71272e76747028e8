//! Classroom interactions, sans-IO: raised hands, reactions, answer cards
//! and red packets, each with its state, who may do what, and a typed
//! error for what is not allowed. (Chat and its mutes live in the push
//! gate; the service checks who may switch them.)

use std::collections::{BTreeMap, VecDeque};

use hashbrown::{HashMap, HashSet};
use room_core::{Role, Timestamp, Uin};
use serde::{Deserialize, Serialize};

/// Who is acting, as the room service authenticated them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    /// The user.
    pub uin: Uin,
    /// Their role in the room.
    pub role: Role,
}

impl Actor {
    fn is_staff(self) -> bool {
        self.role.is_staff()
    }

    /// Learners take part (students and host-defined roles); observers
    /// only watch.
    fn is_learner(self) -> bool {
        matches!(self.role, Role::Student | Role::Custom(_))
    }
}

/// An interaction, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Raise a hand.
    RaiseHand,
    /// Lower one's hand.
    LowerHand,
    /// Invite a raised hand to speak.
    InviteHand,
    /// Dismiss a raised hand.
    DismissHand,
    /// Send flowers or likes.
    React,
    /// Open an answer card.
    OpenCard,
    /// Answer a card.
    AnswerCard,
    /// Close a card.
    CloseCard,
    /// Send a red packet.
    SendPacket,
    /// Grab from a red packet.
    GrabPacket,
    /// Chat.
    Chat,
    /// Mute the room or a user.
    Mute,
}

/// Why an interaction was refused. State is unchanged when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// The actor's role may not do this.
    #[error("a {role} may not {action:?}")]
    NotAllowed {
        /// The actor's role.
        role: Role,
        /// The action.
        action: Action,
    },
    /// The hand is already up.
    #[error("the hand is already raised")]
    AlreadyRaised,
    /// The hand is not up.
    #[error("user {0:?} has no raised hand")]
    NotRaised(Uin),
    /// The raised-hand queue is full.
    #[error("the raised-hand queue is full ({max})")]
    HandQueueFull {
        /// Its size.
        max: usize,
    },
    /// A reaction count of 0 or over the limit.
    #[error("reaction count {count} is outside 1..={max}")]
    BadReactionCount {
        /// The count.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// A card is already open.
    #[error("answer card {0} is still open")]
    CardAlreadyOpen(u64),
    /// A card with options outside 2..=26, or a correct answer out of range.
    #[error("bad answer card: {0}")]
    BadCard(&'static str),
    /// No card is open (never opened, or closed).
    #[error("no answer card is open")]
    NoOpenCard,
    /// The card's deadline has passed.
    #[error("the answer card's deadline has passed")]
    DeadlinePassed,
    /// This student already answered.
    #[error("already answered")]
    AlreadyAnswered,
    /// An option the card does not have.
    #[error("option {option} is not one of the card's {options}")]
    BadOption {
        /// The option given.
        option: u8,
        /// How many the card has.
        options: u8,
    },
    /// An amount or count out of range.
    #[error("bad red packet: {0}")]
    BadPacket(&'static str),
    /// Too many red packets are still open.
    #[error("{max} red packets are already open")]
    TooManyPackets {
        /// The limit.
        max: usize,
    },
    /// No such packet.
    #[error("no red packet {0}")]
    NoPacket(u64),
    /// Every share is taken.
    #[error("red packet {0} is empty")]
    PacketEmpty(u64),
    /// This user already grabbed from the packet.
    #[error("already grabbed from red packet {0}")]
    AlreadyGrabbed(u64),
}

fn not_allowed(actor: Actor, action: Action) -> ActionError {
    ActionError::NotAllowed { role: actor.role, action }
}

/// Limits that keep a room's interaction state bounded.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClassroomConfig {
    /// Raised hands queued at once.
    pub max_hands: usize,
    /// Flowers or likes in one message.
    pub max_reaction_count: u32,
    /// Senders whose reaction counts are kept (later senders count only in
    /// the room totals).
    pub max_reaction_senders: usize,
    /// Red packets open at once.
    pub max_open_packets: usize,
    /// Shares in one red packet.
    pub max_packet_shares: u32,
    /// Units in one red packet.
    pub max_packet_amount: u64,
    /// Closed card results kept.
    pub card_history: usize,
}

impl Default for ClassroomConfig {
    fn default() -> Self {
        ClassroomConfig {
            max_hands: 10_000,
            max_reaction_count: 99,
            max_reaction_senders: 100_000,
            max_open_packets: 16,
            max_packet_shares: 10_000,
            max_packet_amount: 1_000_000_000,
            card_history: 16,
        }
    }
}

/// Flowers or likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Reaction {
    /// A flower for the teacher.
    Flower,
    /// A like.
    Like,
}

impl Reaction {
    fn index(self) -> usize {
        match self {
            Reaction::Flower => 0,
            Reaction::Like => 1,
        }
    }
}

/// An answer card as the teacher opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardSpec {
    /// Options A, B, C... (2 to 26).
    pub options: u8,
    /// The correct option, if the question has one.
    pub correct: Option<u8>,
    /// When answers stop being taken.
    pub deadline: Option<Timestamp>,
}

/// An open card.
#[derive(Debug, Clone)]
struct OpenCard {
    id: u64,
    spec: CardSpec,
    tally: Vec<u32>,
    answered: HashMap<Uin, u8, ahash::RandomState>,
}

/// A closed card's results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardResult {
    /// The card.
    pub id: u64,
    /// Answers per option.
    pub tally: Vec<u32>,
    /// The correct option, if any.
    pub correct: Option<u8>,
    /// Students who answered.
    pub answered: u32,
    /// Students who answered correctly.
    pub right: u32,
}

#[derive(Debug, Clone)]
struct Packet {
    shares: Vec<u64>,
    total: u64,
    count: u32,
    grabbed: HashMap<Uin, u64, ahash::RandomState>,
}

/// A red packet's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketState {
    /// Units in the packet.
    pub total: u64,
    /// Shares it was split into.
    pub count: u32,
    /// Shares taken.
    pub grabbed: u32,
    /// Units taken.
    pub taken: u64,
}

/// One room's interactions.
#[derive(Debug, Clone)]
pub struct Classroom {
    config: ClassroomConfig,
    hands: VecDeque<Uin>,
    raised: HashSet<Uin, ahash::RandomState>,
    reactions_by_sender: HashMap<Uin, [u64; 2], ahash::RandomState>,
    reaction_totals: [u64; 2],
    card: Option<OpenCard>,
    results: VecDeque<CardResult>,
    next_card: u64,
    packets: BTreeMap<u64, Packet>,
    next_packet: u64,
    rng: u64,
}

/// splitmix64: a small, well-mixed generator for packet splits.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Splits `total` into `count` shares of at least 1 that add up to
/// `total` exactly: `count - 1` random cut points over the units above the
/// one each share is owed.
pub fn split_packet(total: u64, count: u32, seed: u64) -> Vec<u64> {
    let count = count.max(1) as usize;
    let spare = total.saturating_sub(count as u64);
    let mut state = seed;
    let mut cuts: Vec<u64> = (1..count).map(|_| next_random(&mut state) % (spare + 1)).collect();
    cuts.sort_unstable();
    let mut shares = Vec::with_capacity(count);
    let mut last = 0;
    for cut in cuts {
        shares.push(1 + cut - last);
        last = cut;
    }
    shares.push(1 + spare - last);
    // Grabs take shares from the end; shuffle so order says nothing.
    for i in (1..shares.len()).rev() {
        let j = (next_random(&mut state) % (i as u64 + 1)) as usize;
        shares.swap(i, j);
    }
    shares
}

impl Classroom {
    /// A room with nothing going on. `seed` drives red packet splits.
    pub fn new(config: ClassroomConfig, seed: u64) -> Self {
        Classroom {
            config,
            hands: VecDeque::new(),
            raised: HashSet::with_hasher(ahash::RandomState::new()),
            reactions_by_sender: HashMap::with_hasher(ahash::RandomState::new()),
            reaction_totals: [0; 2],
            card: None,
            results: VecDeque::new(),
            next_card: 1,
            packets: BTreeMap::new(),
            next_packet: 1,
            rng: seed,
        }
    }

    // ---------- raised hands ----------

    /// A learner raises a hand; it joins the end of the queue.
    pub fn raise_hand(&mut self, actor: Actor) -> Result<(), ActionError> {
        if !actor.is_learner() {
            return Err(not_allowed(actor, Action::RaiseHand));
        }
        if self.raised.contains(&actor.uin) {
            return Err(ActionError::AlreadyRaised);
        }
        if self.hands.len() >= self.config.max_hands {
            return Err(ActionError::HandQueueFull { max: self.config.max_hands });
        }
        self.raised.insert(actor.uin);
        self.hands.push_back(actor.uin);
        Ok(())
    }

    fn take_hand(&mut self, uin: Uin) -> Result<(), ActionError> {
        if !self.raised.remove(&uin) {
            return Err(ActionError::NotRaised(uin));
        }
        self.hands.retain(|u| *u != uin);
        Ok(())
    }

    /// A learner lowers their own hand.
    pub fn lower_hand(&mut self, actor: Actor) -> Result<(), ActionError> {
        if !actor.is_learner() {
            return Err(not_allowed(actor, Action::LowerHand));
        }
        self.take_hand(actor.uin)
    }

    /// A teacher or assistant invites a raised hand to speak (it leaves the queue).
    pub fn invite_hand(&mut self, actor: Actor, uin: Uin) -> Result<(), ActionError> {
        if !actor.is_staff() {
            return Err(not_allowed(actor, Action::InviteHand));
        }
        self.take_hand(uin)
    }

    /// A teacher or assistant dismisses a raised hand.
    pub fn dismiss_hand(&mut self, actor: Actor, uin: Uin) -> Result<(), ActionError> {
        if !actor.is_staff() {
            return Err(not_allowed(actor, Action::DismissHand));
        }
        self.take_hand(uin)
    }

    /// Raised hands, oldest first.
    pub fn hands(&self) -> impl Iterator<Item = Uin> + '_ {
        self.hands.iter().copied()
    }

    /// A member left: their hand goes down.
    pub fn left(&mut self, uin: Uin) {
        let _ = self.take_hand(uin);
    }

    // ---------- flowers and likes ----------

    /// Anyone present but observers sends `count` flowers or likes.
    /// Returns the room's new total for that reaction.
    pub fn react(&mut self, actor: Actor, reaction: Reaction, count: u32) -> Result<u64, ActionError> {
        self.check_react(actor, count)?;
        let i = reaction.index();
        self.reaction_totals[i] += u64::from(count);
        let keep = self.reactions_by_sender.len() < self.config.max_reaction_senders;
        if let Some(mine) = self.reactions_by_sender.get_mut(&actor.uin) {
            mine[i] += u64::from(count);
        } else if keep {
            let mut mine = [0; 2];
            mine[i] = u64::from(count);
            self.reactions_by_sender.insert(actor.uin, mine);
        }
        Ok(self.reaction_totals[i])
    }

    /// Whether `actor` may send `count` flowers or likes (what
    /// [`Classroom::react`] would refuse), without counting them.
    pub fn check_react(&self, actor: Actor, count: u32) -> Result<(), ActionError> {
        if actor.role == Role::Observer {
            return Err(not_allowed(actor, Action::React));
        }
        if count == 0 || count > self.config.max_reaction_count {
            return Err(ActionError::BadReactionCount { count, max: self.config.max_reaction_count });
        }
        Ok(())
    }

    /// The room's total of a reaction.
    pub fn reaction_total(&self, reaction: Reaction) -> u64 {
        self.reaction_totals[reaction.index()]
    }

    /// What one sender has sent.
    pub fn reactions_of(&self, uin: Uin, reaction: Reaction) -> u64 {
        self.reactions_by_sender.get(&uin).map_or(0, |r| r[reaction.index()])
    }

    // ---------- answer cards ----------

    /// A teacher or assistant opens a card; returns its id.
    pub fn open_card(&mut self, actor: Actor, now: Timestamp, spec: CardSpec) -> Result<u64, ActionError> {
        if !actor.is_staff() {
            return Err(not_allowed(actor, Action::OpenCard));
        }
        if let Some(card) = &self.card {
            return Err(ActionError::CardAlreadyOpen(card.id));
        }
        if !(2..=26).contains(&spec.options) {
            return Err(ActionError::BadCard("options must be 2 to 26"));
        }
        if spec.correct.is_some_and(|c| c >= spec.options) {
            return Err(ActionError::BadCard("the correct option is not one of the options"));
        }
        if spec.deadline.is_some_and(|d| d <= now) {
            return Err(ActionError::BadCard("the deadline has already passed"));
        }
        let id = self.next_card;
        self.next_card += 1;
        self.card = Some(OpenCard {
            id,
            spec,
            tally: vec![0; usize::from(spec.options)],
            answered: HashMap::with_hasher(ahash::RandomState::new()),
        });
        Ok(id)
    }

    /// A learner answers the open card, once, before its deadline.
    pub fn answer_card(&mut self, actor: Actor, now: Timestamp, option: u8) -> Result<(), ActionError> {
        if !actor.is_learner() {
            return Err(not_allowed(actor, Action::AnswerCard));
        }
        let card = self.card.as_mut().ok_or(ActionError::NoOpenCard)?;
        if card.spec.deadline.is_some_and(|d| now >= d) {
            return Err(ActionError::DeadlinePassed);
        }
        if option >= card.spec.options {
            return Err(ActionError::BadOption { option, options: card.spec.options });
        }
        if card.answered.contains_key(&actor.uin) {
            return Err(ActionError::AlreadyAnswered);
        }
        card.answered.insert(actor.uin, option);
        card.tally[usize::from(option)] += 1;
        Ok(())
    }

    /// The open card's id and live tally.
    pub fn card_tally(&self) -> Option<(u64, &[u32])> {
        self.card.as_ref().map(|c| (c.id, c.tally.as_slice()))
    }

    /// When the open card's deadline falls.
    pub fn card_deadline(&self) -> Option<Timestamp> {
        self.card.as_ref().and_then(|c| c.spec.deadline)
    }

    /// A teacher or assistant closes the card; returns its results.
    pub fn close_card(&mut self, actor: Actor) -> Result<CardResult, ActionError> {
        if !actor.is_staff() {
            return Err(not_allowed(actor, Action::CloseCard));
        }
        self.close_card_now().ok_or(ActionError::NoOpenCard)
    }

    /// Closes the open card (its deadline passed, or the room is ending).
    pub fn close_card_now(&mut self) -> Option<CardResult> {
        let card = self.card.take()?;
        let right = card.spec.correct.map_or(0, |c| card.tally[usize::from(c)]);
        let result = CardResult {
            id: card.id,
            answered: card.answered.len() as u32,
            right,
            correct: card.spec.correct,
            tally: card.tally,
        };
        if self.results.len() >= self.config.card_history {
            self.results.pop_front();
        }
        self.results.push_back(result.clone());
        Some(result)
    }

    /// Results of the most recently closed cards, oldest first.
    pub fn card_results(&self) -> impl Iterator<Item = &CardResult> {
        self.results.iter()
    }

    // ---------- red packets ----------

    /// A teacher sends `amount` units split at random into `count` shares
    /// of at least one unit each; returns the packet's id.
    pub fn send_packet(&mut self, actor: Actor, amount: u64, count: u32) -> Result<u64, ActionError> {
        if actor.role != Role::Teacher {
            return Err(not_allowed(actor, Action::SendPacket));
        }
        if count == 0 || count > self.config.max_packet_shares {
            return Err(ActionError::BadPacket("share count out of range"));
        }
        if amount < u64::from(count) {
            return Err(ActionError::BadPacket("fewer units than shares: each share needs at least one"));
        }
        if amount > self.config.max_packet_amount {
            return Err(ActionError::BadPacket("amount over the limit"));
        }
        if self.packets.len() >= self.config.max_open_packets {
            // Make room by forgetting the oldest packet that is empty.
            let empty = self.packets.iter().find(|(_, p)| p.shares.is_empty()).map(|(id, _)| *id);
            match empty {
                Some(id) => {
                    self.packets.remove(&id);
                }
                None => return Err(ActionError::TooManyPackets { max: self.config.max_open_packets }),
            }
        }
        let id = self.next_packet;
        self.next_packet += 1;
        let seed = next_random(&mut self.rng) ^ id;
        let packet = Packet {
            shares: split_packet(amount, count, seed),
            total: amount,
            count,
            grabbed: HashMap::with_hasher(ahash::RandomState::new()),
        };
        self.packets.insert(id, packet);
        Ok(id)
    }

    /// A learner grabs a share, at most once per packet; returns the units.
    pub fn grab_packet(&mut self, actor: Actor, id: u64) -> Result<u64, ActionError> {
        if !actor.is_learner() {
            return Err(not_allowed(actor, Action::GrabPacket));
        }
        let packet = self.packets.get_mut(&id).ok_or(ActionError::NoPacket(id))?;
        if packet.grabbed.contains_key(&actor.uin) {
            return Err(ActionError::AlreadyGrabbed(id));
        }
        let share = packet.shares.pop().ok_or(ActionError::PacketEmpty(id))?;
        packet.grabbed.insert(actor.uin, share);
        Ok(share)
    }

    /// A packet's state.
    pub fn packet(&self, id: u64) -> Option<PacketState> {
        self.packets.get(&id).map(|p| PacketState {
            total: p.total,
            count: p.count,
            grabbed: p.grabbed.len() as u32,
            taken: p.grabbed.values().sum(),
        })
    }
}

/// The open answer card as the room sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenCardView {
    /// The card.
    pub id: u64,
    /// Options A, B, C...
    pub options: u8,
    /// When answers stop being taken.
    pub deadline: Option<Timestamp>,
    /// Answers per option so far.
    pub tally: Vec<u32>,
    /// Learners who answered so far.
    pub answered: u32,
}

impl Classroom {
    /// The open card, if any.
    pub fn open_card_view(&self) -> Option<OpenCardView> {
        self.card.as_ref().map(|c| OpenCardView {
            id: c.id,
            options: c.spec.options,
            deadline: c.spec.deadline,
            tally: c.tally.clone(),
            answered: c.answered.len() as u32,
        })
    }

    /// What `uin` answered on the open card.
    pub fn answer_of(&self, uin: Uin) -> Option<u8> {
        self.card.as_ref().and_then(|c| c.answered.get(&uin).copied())
    }

    /// What `uin` took from packet `id`.
    pub fn grab_of(&self, id: u64, uin: Uin) -> Option<u64> {
        self.packets.get(&id).and_then(|p| p.grabbed.get(&uin).copied())
    }

    /// Packets still held (open or emptied), by id.
    pub fn packets(&self) -> impl Iterator<Item = (u64, PacketState)> + '_ {
        self.packets.keys().filter_map(|&id| self.packet(id).map(|p| (id, p)))
    }

    /// Everything the room's interactions hold, for its next owner. Per
    /// sender reaction counts are left out (only the room's totals are
    /// kept): they are unbounded in number and reactions are the class
    /// that may be shed.
    pub fn snapshot(&self) -> ClassroomSnapshot {
        let mut packets: Vec<PacketSnapshot> = self
            .packets
            .iter()
            .map(|(&id, p)| {
                let mut grabbed: Vec<(Uin, u64)> = p.grabbed.iter().map(|(u, a)| (*u, *a)).collect();
                grabbed.sort_unstable();
                PacketSnapshot { id, total: p.total, count: p.count, shares: p.shares.clone(), grabbed }
            })
            .collect();
        packets.sort_unstable_by_key(|p| p.id);
        ClassroomSnapshot {
            hands: self.hands.iter().copied().collect(),
            reaction_totals: self.reaction_totals,
            card: self.card.as_ref().map(|c| {
                let mut answers: Vec<(Uin, u8)> = c.answered.iter().map(|(u, o)| (*u, *o)).collect();
                answers.sort_unstable();
                CardSnapshot {
                    id: c.id,
                    options: c.spec.options,
                    correct: c.spec.correct,
                    deadline: c.spec.deadline,
                    answers,
                }
            }),
            results: self.results.iter().cloned().collect(),
            next_card: self.next_card,
            packets,
            next_packet: self.next_packet,
            rng: self.rng,
        }
    }

    /// A room's interactions as `snapshot` left them. The snapshot comes
    /// from a shared cache, so it is checked as input: every bound of
    /// `config` holds, tallies agree with the answers, and every packet's
    /// shares and grabs add up to its total.
    pub fn restore(config: ClassroomConfig, snapshot: ClassroomSnapshot) -> Result<Classroom, RestoreError> {
        let bad = RestoreError;
        let ClassroomSnapshot { hands, reaction_totals, card, results, next_card, packets, next_packet, rng } =
            snapshot;
        if hands.len() > config.max_hands {
            return Err(bad("more raised hands than the queue holds"));
        }
        let mut room = Classroom::new(config, rng);
        for uin in hands {
            if !room.raised.insert(uin) {
                return Err(bad("a hand raised twice"));
            }
            room.hands.push_back(uin);
        }
        room.reaction_totals = reaction_totals;
        if let Some(c) = card {
            if !(2..=26).contains(&c.options) || c.correct.is_some_and(|x| x >= c.options) || c.id >= next_card {
                return Err(bad("an answer card out of range"));
            }
            let mut tally = vec![0u32; usize::from(c.options)];
            let mut answered = HashMap::with_capacity_and_hasher(c.answers.len(), ahash::RandomState::new());
            for (uin, option) in c.answers {
                if option >= c.options || answered.insert(uin, option).is_some() {
                    return Err(bad("an answer out of range or given twice"));
                }
                tally[usize::from(option)] += 1;
            }
            let spec = CardSpec { options: c.options, correct: c.correct, deadline: c.deadline };
            room.card = Some(OpenCard { id: c.id, spec, tally, answered });
        }
        if results.len() > room.config.card_history {
            return Err(bad("more card results than the history holds"));
        }
        room.results = results.into();
        room.next_card = next_card.max(1);
        if packets.len() > room.config.max_open_packets {
            return Err(bad("more red packets than may be open"));
        }
        for p in packets {
            let shares_left: Option<u64> = p.shares.iter().try_fold(0u64, |a, &s| a.checked_add(s));
            let taken: Option<u64> = p.grabbed.iter().try_fold(0u64, |a, &(_, s)| a.checked_add(s));
            let conserved = matches!((shares_left, taken), (Some(l), Some(t)) if l.checked_add(t) == Some(p.total));
            if p.id >= next_packet
                || p.count == 0
                || p.count > room.config.max_packet_shares
                || p.total > room.config.max_packet_amount
                || p.shares.len() + p.grabbed.len() != p.count as usize
                || p.shares.contains(&0)
                || !conserved
            {
                return Err(bad("a red packet whose shares do not add up"));
            }
            let mut grabbed = HashMap::with_capacity_and_hasher(p.grabbed.len(), ahash::RandomState::new());
            for (uin, share) in p.grabbed {
                if grabbed.insert(uin, share).is_some() {
                    return Err(bad("a red packet grabbed twice by one learner"));
                }
            }
            room.packets.insert(p.id, Packet { shares: p.shares, total: p.total, count: p.count, grabbed });
        }
        room.next_packet = next_packet.max(1);
        Ok(room)
    }
}

/// A classroom snapshot that cannot be restored: it says which rule the
/// data broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("classroom snapshot refused: {0}")]
pub struct RestoreError(pub &'static str);

/// Everything a room's interactions hold ([`Classroom::snapshot`]), in a
/// form that serialises; [`Classroom::restore`] checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassroomSnapshot {
    hands: Vec<Uin>,
    reaction_totals: [u64; 2],
    card: Option<CardSnapshot>,
    results: Vec<CardResult>,
    next_card: u64,
    packets: Vec<PacketSnapshot>,
    next_packet: u64,
    rng: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CardSnapshot {
    id: u64,
    options: u8,
    correct: Option<u8>,
    deadline: Option<Timestamp>,
    answers: Vec<(Uin, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PacketSnapshot {
    id: u64,
    total: u64,
    count: u32,
    shares: Vec<u64>,
    grabbed: Vec<(Uin, u64)>,
}
